"""server/limits.py: how big one request may be, checked before any work."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.limits import RequestLimits
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error


def test_limits_must_allow_at_least_one():
    with pytest.raises(ValueError):
        RequestLimits(max_prompts=0)


def test_prompt_lists_and_fan_out_beyond_the_limits_are_a_400_naming_the_field():
    engine = FakeEngineClient(model_name="m")
    app = create_app(engine, limits=RequestLimits(max_prompts=2, max_choices=4))
    with TestClient(app) as client:
        body = {"model": "m", "max_tokens": 2}
        assert client.post("/v1/completions", json={**body, "prompt": ["a", "b"], "n": 2}).status_code == 200
        assert_error(client.post("/v1/completions", json={**body, "prompt": ["a", "b", "c"]}), 400, param="prompt")
        assert_error(client.post("/v1/completions", json={**body, "prompt": ["a", "b"], "n": 3}), 400, param="n")
