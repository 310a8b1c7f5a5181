"""Renderers build OpenAI's exact JSON shapes, explicit nulls included."""
from __future__ import annotations

import pytest

from engine.outputs import RequestOutput
from scheduler.output import TokenLogprob
from server.protocol import DeltaMessage, Usage
from server.rendering import (
    ChatRenderer,
    ChoiceState,
    CompletionRenderer,
    ResponseHead,
    TokenText,
    usage,
)
from tests.server.fake_engine import FakeTokenizer

TOKENS = TokenText(FakeTokenizer())
HEAD = ResponseHead(id="chatcmpl-1", model="m", created=7)
A, B = FakeTokenizer().encode("a")[0], FakeTokenizer().encode("b")[0]


def _out(text: str, ids: list[int], finished: bool = False, logprobs=None, spec=(0, 0, 0),
         total: int | None = None) -> RequestOutput:
    steps, drafts, accepted = spec
    return RequestOutput(request_id="r", new_token_ids=ids, new_text=text, finished=finished,
                         finish_reason="length" if finished else None, num_prompt_tokens=3,
                         num_output_tokens=len(ids) if total is None else total,
                         logprobs=logprobs, num_spec_steps=steps, num_draft_tokens=drafts,
                         num_accepted_tokens=accepted)


def _stream(renderer, state, outputs, include_usage: bool) -> list[dict]:
    leave_out = None if include_usage else {"usage"}
    chunks = []
    opening = renderer.opening(state)
    for choice in ([opening] if opening else []) + [
            c for out in outputs for c in renderer.increment(state, out)]:
        chunks.append(renderer.chunk(HEAD, [choice]).model_dump(exclude=leave_out))
    return chunks


def test_chat_stream_chunks_exact():
    renderer = ChatRenderer(TOKENS, want_logprobs=False)
    chunks = _stream(renderer, ChoiceState(0), [_out("ab", [A, B]), _out("", [], finished=True)],
                     include_usage=False)
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    assert chunks == [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "ab"}, "logprobs": None,
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                              "finish_reason": "length"}]},
    ]
    assert all(list(c) == ["id", "object", "created", "model", "choices"] for c in chunks)
    assert all(list(c["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
               for c in chunks)


def test_chunks_carry_null_usage_only_with_include_usage():
    renderer = ChatRenderer(TOKENS, want_logprobs=False)
    chunks = _stream(renderer, ChoiceState(0), [_out("a", [A], finished=True)],
                     include_usage=True)
    assert all(list(c)[-1] == "usage" and c["usage"] is None for c in chunks)
    final = renderer.chunk(HEAD, [], usage([ChoiceState(0, last=_out("a", [A]))], 3))
    assert final.model_dump() == {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_chat_response_exact_with_logprobs():
    renderer = ChatRenderer(TOKENS, want_logprobs=True)
    state = ChoiceState(1)
    renderer.fold(state, _out("a", [A], finished=True, spec=(2, 4, 1),
                              logprobs=[TokenLogprob(A, -0.5, [(A, -0.5), (B, -1.5)])]))
    body = renderer.response(HEAD, [state], prompt_tokens=3).model_dump()
    a, b = {"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5,
                                                             "bytes": [98]}
    assert body == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
        "choices": [{"index": 1, "message": {"role": "assistant", "content": "a"},
                     "logprobs": {"content": [{**a, "top_logprobs": [a, b]}]},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                  "speculative": {"draft_tokens": 4, "accepted_tokens": 1, "steps": 2,
                                  "mean_accepted_length": 1.5}}}


def test_chat_response_without_logprobs_has_explicit_null():
    renderer = ChatRenderer(TOKENS, want_logprobs=False)
    state = ChoiceState(0)
    renderer.fold(state, _out("a", [A], finished=True))
    choice = renderer.response(HEAD, [state], 3).model_dump()["choices"][0]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": "a"},
                      "logprobs": None, "finish_reason": "length"}


def test_usage_sums_choices_and_counts_the_prompt_once():
    states = [ChoiceState(0, last=_out("", [], total=4, spec=(2, 6, 2))),
              ChoiceState(1, last=_out("", [], total=3, spec=(1, 3, 1)))]
    assert usage(states, 5).model_dump() == {
        "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
        "speculative": {"draft_tokens": 9, "accepted_tokens": 3, "steps": 3,
                        "mean_accepted_length": 2.0}}
    assert "speculative" not in usage([ChoiceState(0, last=_out("", [], total=2))], 5).model_dump()


def test_completion_stream_echo_and_legacy_logprobs():
    renderer = CompletionRenderer(TOKENS, logprobs=1, echo=True)
    state = ChoiceState(0, prompt_text="hi ")
    lps = [TokenLogprob(A, -0.5, [(A, -0.5), (B, -1.5)]), TokenLogprob(B, -0.25, [(B, -0.25)])]
    outputs = [_out("a", [A], logprobs=lps[:1]), _out("b", [B], finished=True, logprobs=lps[1:])]
    chunks = _stream(renderer, state, outputs, include_usage=False)
    head = {"id": "chatcmpl-1", "object": "text_completion", "created": 7, "model": "m"}
    assert [c["choices"][0] for c in chunks] == [
        {"index": 0, "text": "hi ", "logprobs": None, "finish_reason": None},
        {"index": 0, "text": "a", "logprobs": {
            "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5}],
            "text_offset": [0]}, "finish_reason": None},
        {"index": 0, "text": "b", "logprobs": {
            "tokens": ["b"], "token_logprobs": [-0.25], "top_logprobs": [{"b": -0.25}],
            "text_offset": [1]}, "finish_reason": None},
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"},
    ]
    assert all({k: c[k] for k in head} == head and list(c) == [*head, "choices"]
               for c in chunks)
    # Key order too: the bytes on the wire are what clients have seen so far.
    assert all(list(c["choices"][0]) == ["index", "text", "logprobs", "finish_reason"]
               for c in chunks)
    assert renderer.choice(state).model_dump()["text"] == "hi ab"


@pytest.mark.parametrize("k, top", [(None, None), (0, [None])])
def test_completion_logprobs_null_or_without_alternatives(k, top):
    renderer = CompletionRenderer(TOKENS, logprobs=k, echo=False)
    state = ChoiceState(0)
    renderer.fold(state, _out("a", [A], finished=True,
                              logprobs=[TokenLogprob(A, -0.5, [(A, -0.5)])]))
    logprobs = renderer.choice(state).model_dump()["logprobs"]
    assert (logprobs if top is None else logprobs["top_logprobs"]) == top


def test_empty_increment_makes_no_chunk():
    for renderer in (ChatRenderer(TOKENS, True), CompletionRenderer(TOKENS, None, False)):
        assert renderer.increment(ChoiceState(0), _out("", [])) == []
    assert CompletionRenderer(TOKENS, None, echo=False).opening(ChoiceState(0)) is None


@pytest.mark.parametrize("model, fields", [(Usage, {"prompt_tokens", "completion_tokens",
                                                    "total_tokens", "speculative"}),
                                           (DeltaMessage, {"role", "content"})])
def test_omitting_nones_keeps_the_documented_schema(model, fields):
    # /openapi.json documents these models; leaving out nulls must not blank them.
    assert set(model.model_json_schema(mode="serialization")["properties"]) == fields
