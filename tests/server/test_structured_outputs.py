"""response_format and logit_bias through the official openai client on live
servers (the tiny random model): plain decoding, n-gram and draft-model
speculation. Every schema-constrained output parses and validates; greedy
outputs are identical with and without speculation; forbidden n-gram drafts
are cut (the /metrics counter moves); bad values are OpenAI-shaped 400s."""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import httpx
import jsonschema_rs
import openai
import pytest

from tests.server.helpers import LiveServer, assert_error, live_server

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "ok", "color", "n"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "ok": {"type": "boolean"},
                         "color": {"enum": ["red", "green", "blue"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999}}}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
PROMPTS = ["Reply in JSON: what colour is the sky?",
           'Example: {"name": "x", "ok": true, "color": "red", "n": 1} and {"name": "x", "ok": true,',
           "def add(a, b):\n    return a + b\n\ndef add(a, b):",
           "one two three four one two three four one two"]
# Prompts whose greedy json_object output closes within the budget on this
# model in float32 (the servers run float32 whatever `auto` means on the host:
# in bfloat16 the random model's greedy walk is another one).
OBJECT_PROMPTS = ["Hello", "What is 2+2?", "json please", "Give me a JSON object."]
METHODS = ("none", "ngram", "draft-model")
CUT_METRIC = "specserve:spec_grammar_cut_draft_tokens_total"


def _engine(model_dir: str, method: str, draft_dir: str) -> Any:
    from engine.client import AsyncEngineClient
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from scheduler.load import StepCostModel

    config = EngineConfig(
        model=model_dir, served_model_name="tiny-test-model", dtype="float32",
        cache=CacheConfig(block_size=16, num_blocks=512),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, policy="adaptive",
                                      draft_model=draft_dir if method == "draft-model" else None))
    return AsyncEngineClient(LLMEngine(config, step_cost=StepCostModel.flat()), config.served_model_name)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, LiveServer]]:
    from tests.tiny_model import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), seed=5)
    draft_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-draft"), seed=11, num_layers=1)
    with contextlib.ExitStack() as stack:
        yield {method: stack.enter_context(live_server(_engine(model_dir, method, draft_dir)))
               for method in METHODS}


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _generate(server: LiveServer, prompt: str, chat: bool, stream: bool, **kw) -> tuple[str, str]:
    """(text, finish_reason) of one greedy request through the official client."""
    client = _client(server)
    kw = {"model": "tiny-test-model", "temperature": 0, "max_tokens": 120, "stream": stream} | kw
    if chat:
        response = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
        pieces = ([(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in response if c.choices]
                  if stream else [(response.choices[0].message.content, response.choices[0].finish_reason)])
    else:  # the client's completions.create has no response_format (OpenAI's API neither): extra_body
        if "response_format" in kw:
            kw["extra_body"] = {"response_format": kw.pop("response_format")}
        response = client.completions.create(prompt=prompt, **kw)
        pieces = ([(c.choices[0].text, c.choices[0].finish_reason) for c in response if c.choices]
                  if stream else [(response.choices[0].text, response.choices[0].finish_reason)])
    return "".join(text for text, _ in pieces), pieces[-1][1]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_json_schema_outputs_validate_and_match_without_speculation(servers, chat, stream):
    validator = jsonschema_rs.validator_for(SCHEMA)
    for prompt in PROMPTS:
        plain = _generate(servers["none"], prompt, chat, stream, response_format=JSON_SCHEMA_FORMAT)
        text, finish = plain
        assert finish == "stop", f"{prompt!r}: {text!r}"
        validator.validate(json.loads(text))
        for method in METHODS[1:]:
            assert _generate(servers[method], prompt, chat, stream, response_format=JSON_SCHEMA_FORMAT) == plain, method


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_json_object_outputs_parse_and_match_without_speculation(servers, chat, stream):
    for prompt in OBJECT_PROMPTS:
        plain = _generate(servers["none"], prompt, chat, stream, max_tokens=200,
                          response_format={"type": "json_object"})
        assert plain[1] == "stop" and isinstance(json.loads(plain[0]), dict), plain
        for method in METHODS[1:]:
            assert _generate(servers[method], prompt, chat, stream, max_tokens=200,
                             response_format={"type": "json_object"}) == plain, method


def _cut_drafts(server: LiveServer) -> float:
    text = httpx.get(server.url + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(CUT_METRIC)))


def test_forbidden_ngram_drafts_are_cut_and_counted(servers):
    before = _cut_drafts(servers["ngram"])
    prompt = '{"name": "x", "ok": true, "color": "red", "n": 1} xyz {"name": "x", "ok": true, "color": "red", "n": 1} xyz'
    _generate(servers["ngram"], prompt, False, False, response_format=JSON_SCHEMA_FORMAT)
    assert _cut_drafts(servers["ngram"]) > before


def _token(server: LiveServer, text: str) -> int:
    return server.app.state.engine.tokenizer.encode(text)[0]


def _token_texts(server: LiveServer, prompt: str, chat: bool, **kw) -> list[str]:
    """The text of each output token (from logprobs), greedy."""
    client = _client(server)
    kw = {"model": "tiny-test-model", "temperature": 0, "max_tokens": 6} | kw
    if chat:
        response = client.chat.completions.create(messages=[{"role": "user", "content": prompt}],
                                                  logprobs=True, top_logprobs=0, **kw)
        return [entry.token for entry in response.choices[0].logprobs.content]
    return client.completions.create(prompt=prompt, logprobs=0, **kw).choices[0].logprobs.tokens


def _recognisable(server: LiveServer, texts: list[str]) -> tuple[str, int]:
    """The first of `texts` that only one token has (byte tokens decode to
    the same replacement character), and that token's id."""
    tokenizer = server.app.state.engine.tokenizer
    for text in texts:
        ids = [i for i in range(server.app.state.engine.vocab_size) if tokenizer.decode([i]) == text]
        if len(ids) == 1:
            return text, ids[0]
    raise AssertionError(f"no output token is recognisable by its text: {texts}")


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_logit_bias_forces_and_bans_tokens_with_and_without_speculation(servers, chat):
    tokenizer = servers["none"].app.state.engine.tokenizer
    forced = _token(servers["none"], " fox")
    for method in METHODS:
        text, _ = _generate(servers[method], PROMPTS[2], chat, False, max_tokens=6, logit_bias={str(forced): 100})
        assert text == tokenizer.decode([forced]) * 6, method
    chosen, banned = _recognisable(servers["none"], _token_texts(servers["none"], PROMPTS[1], chat, max_tokens=16))
    for method in METHODS:
        out = _token_texts(servers[method], PROMPTS[1], chat, max_tokens=16, logit_bias={str(banned): -100})
        assert chosen not in out, method
        biased = {str(banned): -100, str(forced): 4.5, "40": 2}
        assert (_generate(servers[method], PROMPTS[3], chat, False, max_tokens=16, logit_bias=biased)
                == _generate(servers["none"], PROMPTS[3], chat, False, max_tokens=16, logit_bias=biased)), method


@pytest.mark.parametrize("bias", [{"5": 100.5}, {"5": -101}, {"99999999": 1}, {"x5": 1}, {"-1": 1},
                                  {str(i): 1 for i in range(301)}])
def test_bad_logit_bias_is_a_400_naming_it(servers, bias):
    with httpx.Client(base_url=servers["none"].url) as http:
        response = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "logit_bias": bias})
    assert_error(response, 400, param="logit_bias")


@pytest.mark.parametrize("schema, feature", [({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "not"),
                                             ({"type": "array", "uniqueItems": True}, "uniqueItems"),
                                             ({"type": "strnig"}, "strnig")])
def test_unsupported_schema_feature_is_a_400_naming_it(servers, schema, feature):
    body = {"prompt": "x", "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    with httpx.Client(base_url=servers["ngram"].url) as http:
        error = assert_error(http.post("/v1/completions", json=body), 400, param="response_format")
    assert feature in error["message"]


def test_response_format_with_ignore_eos_is_a_400(servers):
    body = {"prompt": "x", "max_tokens": 2, "ignore_eos": True, "response_format": {"type": "json_object"}}
    with httpx.Client(base_url=servers["none"].url) as http:
        assert_error(http.post("/v1/completions", json=body), 400, param="ignore_eos")
