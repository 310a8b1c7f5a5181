"""The playground page (server/playground.py, server/static/): served at `/`
and `/playground` with its assets, without a key even when the API has one,
shipped as package data, and free of external resources."""
from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from server.playground import STATIC_DIR
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error, live_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keyed_server():
    with live_server(FakeEngineClient(), api_key="sesame") as srv:
        yield srv


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_page_loads_without_a_key(keyed_server, path):
    page = httpx.get(keyed_server.url + path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/playground.js">' in page.text
    assert_error(httpx.get(keyed_server.url + "/v1/models"), 401)


@pytest.mark.parametrize("name, media", [("playground.js", "javascript"), ("playground.css", "text/css")])
def test_assets_are_served(keyed_server, name, media):
    asset = httpx.get(f"{keyed_server.url}/static/{name}")
    assert asset.status_code == 200 and media in asset.headers["content-type"]
    assert asset.text == (STATIC_DIR / name).read_text()


def test_the_page_is_not_in_the_api_schema(keyed_server):
    paths = httpx.get(keyed_server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and "/playground" not in paths


def test_no_external_resources():
    # No CDN, fonts or analytics: the page works on a machine without internet.
    for path in STATIC_DIR.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path.name


def test_every_static_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["server"]
    for path in STATIC_DIR.iterdir():
        assert any(fnmatch.fnmatch(f"static/{path.name}", g) for g in globs), path.name
