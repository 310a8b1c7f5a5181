"""server/routes.py: the endpoints, thin over OpenAIServing."""
from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error


def test_health_and_models_follow_the_engine():
    engine = FakeEngineClient(model_name="tiny", max_model_len=256)
    with TestClient(create_app(engine)) as http:
        assert http.get("/health").json() == {"status": "ok"}
        models = http.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["max_model_len"] == 256
        assert http.get("/v1/models/tiny").json()["id"] == "tiny"
        assert_error(http.get("/v1/models/other"), 404)
        engine.dead = True
        assert_error(http.get("/health"), 503)
        assert_error(http.get("/v1/models"), 503)


def test_both_generation_endpoints_answer_in_their_shapes():
    with TestClient(create_app(FakeEngineClient(model_name="tiny"))) as http:
        chat = http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                       "messages": [{"role": "user", "content": "hi"}]}).json()
        assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
        text = http.post("/v1/completions", json={"model": "tiny", "max_tokens": 3, "prompt": "hi"}).json()
        assert text["object"] == "text_completion" and isinstance(text["choices"][0]["text"], str)
