"""server/middleware.py: the API key and the body size are checked before
any JSON is parsed."""
from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error

BODY = {"model": "m", "prompt": "hi", "max_tokens": 1}


def client(**kwargs):
    return TestClient(create_app(FakeEngineClient(model_name="m"), **kwargs))


def test_v1_needs_the_api_key_and_metrics_their_own():
    with client(api_key="k", metrics_api_key="mk") as http:
        assert_error(http.post("/v1/completions", json=BODY), 401)
        assert_error(http.post("/v1/completions", json=BODY, headers={"Authorization": "Bearer nope"}), 401)
        assert http.post("/v1/completions", json=BODY, headers={"Authorization": "Bearer k"}).status_code == 200
        assert http.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer mk"}).status_code == 200
        assert http.get("/health").status_code == 200  # open


def test_without_keys_everything_is_open():
    with client() as http:
        assert http.post("/v1/completions", json=BODY).status_code == 200
        assert http.get("/metrics").status_code == 200


def test_a_body_over_the_limit_is_a_413_declared_or_not():
    with client(max_body_bytes=200) as http:
        big = {**BODY, "prompt": "x" * 500}
        assert_error(http.post("/v1/completions", json=big), 413)

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"model": "m", "prompt": "'
            yield b"x" * 500
            yield b'"}'

        assert_error(http.post("/v1/completions", content=chunks(),
                               headers={"Content-Type": "application/json"}), 413)
        assert http.post("/v1/completions", json=BODY).status_code == 200
