"""Validation: requests -> prompt ids + SamplingParams, and 400s that name the param."""
from __future__ import annotations

import httpx
import pytest

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server import errors
from server.errors import APIError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.validation import RequestValidator
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error, live_server

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(engine=None, **body):
    body.setdefault("messages", MESSAGES)
    return RequestValidator(engine or FakeEngineClient()).chat(
        ChatCompletionRequest.model_validate(body))


def _completion(engine=None, **body):
    return RequestValidator(engine or FakeEngineClient()).completion(
        CompletionRequest.model_validate(body))


def _rejected(call, **body) -> APIError:
    """The 400 for `body`, whether the protocol models or the validator refuse it."""
    try:
        call(**body)
    except ValidationError as exc:  # the protocol layer: what the HTTP handler turns into a 400
        error = errors.validation_error(RequestValidationError(exc.errors()))
    except APIError as exc:
        error = exc
    else:
        raise AssertionError(f"accepted: {body}")
    assert error.status == 400
    return error


# ----------------------------------------------------------------- accepted


def test_chat_prompt_is_the_templated_messages():
    engine = FakeEngineClient()
    validated = _chat(engine, max_tokens=4, temperature=0.5, logprobs=True, top_logprobs=2, n=3)
    (prompt,) = validated.prompts
    text = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.token_ids == engine.tokenizer.encode(text)
    assert prompt.max_tokens == 4 and validated.n == 3
    assert validated.params.temperature == 0.5 and validated.params.logprobs == 2
    assert validated.prompt_tokens == len(prompt.token_ids)


def test_developer_role_is_templated_as_system():
    engine = FakeEngineClient()
    validated = _chat(engine, messages=[{"role": "developer", "content": "be brief"}])
    assert "system" in engine.tokenizer.decode(validated.prompts[0].token_ids)


def test_unset_options_keep_sampling_defaults():
    params = _chat(max_tokens=2).params
    assert params.temperature == 1.0 and params.top_p == 1.0 and params.logprobs is None
    assert params.stop == () and params.speculative is True


def test_max_completion_tokens_wins_over_max_tokens():
    assert _chat(max_tokens=9, max_completion_tokens=2).prompts[0].max_tokens == 2


def test_without_max_tokens_each_prompt_fills_its_context():
    validated = _completion(FakeEngineClient(max_model_len=100), prompt=["abc", "abcdefgh"])
    assert [p.max_tokens for p in validated.prompts] == [97, 92]
    assert validated.params.max_tokens == 92  # the shared params take the tightest


@pytest.mark.parametrize("prompt, ids, texts", [
    ("ab", [[100, 101]], ["ab"]),
    (["ab", "c"], [[100, 101], [102]], ["ab", "c"]),
    ([100, 101], [[100, 101]], ["ab"]),
    ([[100], [101, 102]], [[100], [101, 102]], ["a", "bc"]),
])
def test_completion_prompt_forms(prompt, ids, texts):
    validated = _completion(prompt=prompt, max_tokens=1)
    assert [p.token_ids for p in validated.prompts] == ids
    assert [p.text for p in validated.prompts] == texts
    assert validated.prompt_tokens == sum(len(i) for i in ids)


# ----------------------------------------------------------------- rejected


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 600}, "max_tokens"),
    ({"max_completion_tokens": 600}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "w" * 600}]}, "messages"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": ["x", ""]}, "stop.1"),
    ({"temperature": -1.0}, "temperature"),
])
def test_chat_errors_name_the_param(body, param):
    assert _rejected(_chat, **body).param == param


def test_stream_options_need_stream():
    validator = RequestValidator(FakeEngineClient())
    body = {"messages": MESSAGES, "stream_options": {"include_usage": True}}
    with pytest.raises(APIError) as info:
        validator.check_common(ChatCompletionRequest.model_validate(body))
    assert info.value.param == "stream_options"
    validator.check_common(ChatCompletionRequest.model_validate({**body, "stream": True}))


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", ""]}, "prompt.1"),
    ({"prompt": [[1, 2], []]}, "prompt.1"),
    ({"prompt": [259]}, "prompt"),
    ({"prompt": [-1]}, "prompt.0"),
    ({"prompt": "w" * 600}, "prompt"),
    ({"prompt": ["abc", "w" * 400], "max_tokens": 200}, "max_tokens"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "top_p": 0.0}, "top_p"),
])
def test_completion_errors_name_the_param(body, param):
    assert _rejected(_completion, **body).param == param


def test_context_messages_give_the_numbers():
    err = _rejected(_chat, max_tokens=600)
    assert "512" in err.message and "600 for the completion" in err.message
    err = _rejected(_completion, prompt="w" * 600)
    assert "512" in err.message and "600 tokens" in err.message


def test_vocabulary_bound_comes_from_the_engine():
    engine = FakeEngineClient()
    engine.vocab_size = 100
    err = _rejected(_completion, engine=engine, prompt=[99, 100])
    assert err.message == "prompt token ids must be in [0, 100)"
    assert _rejected(_chat, engine=engine).param == "messages"  # the template's ids are >= 100


@pytest.mark.parametrize("call, body, param", [
    (_chat, {"messages": MESSAGES}, "messages"),
    (_completion, {"prompt": ["a", "w" * 20]}, "prompt"),
])
def test_prompt_must_fit_the_kv_cache(call, body, param):
    longest = max(len(p.token_ids) for p in call(max_tokens=1, **body).prompts)
    # The prompt plus one output token must fit: capacity longest + 1 is enough.
    assert call(engine=FakeEngineClient(kv_cache_tokens=longest + 1), max_tokens=1, **body)
    err = _rejected(call, engine=FakeEngineClient(kv_cache_tokens=longest), max_tokens=1, **body)
    assert err.param == param and "KV cache" in err.message


def test_template_value_error_names_messages():
    engine = FakeEngineClient()

    def reject(messages, add_generation_prompt=True):
        raise ValueError("roles must alternate")

    engine.tokenizer.apply_chat_template = reject
    err = _rejected(_chat, engine=engine)
    assert err.param == "messages" and "roles must alternate" in err.message


def test_unknown_model_is_404():
    with pytest.raises(APIError) as info:
        RequestValidator(FakeEngineClient()).check_model("gpt-17")
    assert (info.value.status, info.value.param) == (404, "model")
    RequestValidator(FakeEngineClient()).check_model(None)  # "any": the served one


# ----------------------------------------------------------------- over HTTP


def test_rejected_prompts_never_reach_the_engine():
    engine = FakeEngineClient(kv_cache_tokens=100)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        assert_error(http.post("/v1/completions", json={"prompt": [10**6]}), 400, param="prompt")
        assert_error(http.post("/v1/completions", json={"prompt": "w" * 200}), 400,
                     param="prompt")
        assert_error(http.post(CHAT, json={"messages": [{"role": "user", "content": "w" * 90}]}),
                     400, param="messages")
        assert engine.submitted == []
        ok = http.post("/v1/completions", json={"prompt": "w", "max_tokens": 1})
        assert ok.status_code == 200
        assert len(engine.submitted) == 1
