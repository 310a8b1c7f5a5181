"""The official openai client against a live server: chat and completions,
streaming and not, usage, stop, n, logprobs, seed, the .stream() helper."""
from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def engine_client(both_engines):
    """Both engines: exact values are asserted against the fake (`if is_fake:`),
    shapes against both."""
    return both_engines


MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello world"}]


def _chat(client, model_name, **kw):
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model_name, **kw)


def test_chat_non_streaming(openai_client, model_name, is_fake):
    r = _chat(openai_client, model_name, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == model_name and isinstance(r.created, int)
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if is_fake:  # greedy echo of the templated prompt
        assert choice.finish_reason == "length" and u.completion_tokens == 8
        assert choice.message.content == "<|im_sta"


def test_chat_streaming_iteration(openai_client, model_name):
    stream = _chat(openai_client, model_name, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _chat(openai_client, model_name, temperature=0).choices[0].message.content


def test_chat_streaming_include_usage(openai_client, model_name):
    chunks = list(_chat(openai_client, model_name, stream=True,
                        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert 0 < last.usage.completion_tokens <= 8


def test_stream_helper(openai_client, model_name, is_fake):
    kw = {"stop": ["hello"], "max_tokens": 100} if is_fake else {"max_tokens": 8}
    with openai_client.chat.completions.stream(
            model=model_name, messages=MESSAGES, temperature=0, **kw) as stream:
        events = list(stream)
        snapshot = stream.current_completion_snapshot
    kinds = {e.type for e in events}
    assert "chunk" in kinds and "content.done" in kinds
    deltas = "".join(e.delta for e in events if e.type == "content.delta")
    assert snapshot.choices[0].message.content == deltas
    if is_fake:
        assert snapshot.choices[0].finish_reason == "stop"
        final = stream.get_final_completion()
        assert final.choices[0].message.content == "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"


def test_stop_strings(openai_client, model_name, is_fake):
    r = _chat(openai_client, model_name, temperature=0, stop=["user", "|>"], max_tokens=40)
    text = r.choices[0].message.content
    assert "user" not in text and "|>" not in text
    if is_fake:
        assert text == "<|im_start" and r.choices[0].finish_reason == "stop"


def test_stop_string_streaming_held_back(openai_client, model_name, is_fake):
    chunks = list(_chat(openai_client, model_name, temperature=0, stop="start", stream=True,
                        max_tokens=40))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "start" not in text
    if is_fake:
        assert text == "<|im_"


def test_n_choices(openai_client, model_name, is_fake):
    r = _chat(openai_client, model_name, n=3, max_tokens=5, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 15
    if is_fake:
        assert r.usage.completion_tokens == 15
    assert r.usage.prompt_tokens == _chat(openai_client, model_name, max_tokens=1).usage.prompt_tokens


def test_n_streaming_indexes(openai_client, model_name):
    chunks = list(_chat(openai_client, model_name, n=2, max_tokens=4, stream=True))
    by_index: dict[int, list] = {0: [], 1: []}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index].append(ch)
    for index, choices in by_index.items():
        assert choices[0].delta.role == "assistant" and choices[0].delta.content == ""
        assert choices[-1].finish_reason in ("stop", "length")


def test_n_fans_out_with_consecutive_seeds(openai_client, model_name, engine_client, is_fake):
    if not is_fake:
        pytest.skip("inspects the fake engine's submissions")
    r = _chat(openai_client, model_name, n=3, seed=100, temperature=1.0, max_tokens=3)
    ids = {f"{r.id}-{i}" for i in range(3)}
    seeds = {rid: p.seed for rid, _, p in engine_client.submitted if rid in ids}
    assert seeds == {f"{r.id}-0": 100, f"{r.id}-1": 101, f"{r.id}-2": 102}


def test_seed_reproducible(openai_client, model_name):
    a = _chat(openai_client, model_name, temperature=1.0, seed=1234, max_tokens=6)
    b = _chat(openai_client, model_name, temperature=1.0, seed=1234, max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_logprobs(openai_client, model_name):
    r = _chat(openai_client, model_name, logprobs=True, top_logprobs=3, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert all(t.logprob <= 0 for t in entry.top_logprobs)


def test_chat_without_logprobs_has_none(openai_client, model_name):
    assert _chat(openai_client, model_name, max_tokens=2).choices[0].logprobs is None


def test_chat_streaming_logprobs(openai_client, model_name):
    chunks = list(_chat(openai_client, model_name, logprobs=True, top_logprobs=1,
                        max_tokens=5, stream=True, stream_options={"include_usage": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens


def test_content_parts_and_developer_role(openai_client, model_name):
    r = _chat(openai_client, model_name, max_tokens=3, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "text", "text": "there"}]}])
    assert r.choices[0].message.content is not None


def test_speculative_usage_and_opt_out(openai_client, model_name, is_fake):
    on = _chat(openai_client, model_name, max_tokens=8)
    off = _chat(openai_client, model_name, max_tokens=8, extra_body={"speculative": False})
    assert "speculative" not in (off.usage.model_extra or {})
    if is_fake:
        spec = on.usage.model_extra["speculative"]
        assert set(spec) == {"draft_tokens", "accepted_tokens", "steps", "mean_accepted_length"}
        assert spec["mean_accepted_length"] == pytest.approx(1 + spec["accepted_tokens"] / spec["steps"],
                                                             abs=1e-3)


def test_default_max_tokens_fills_context(openai_client, model_name, engine_client, is_fake):
    if not is_fake:
        pytest.skip("would generate up to the whole context on a real model")
    r = openai_client.chat.completions.create(model=model_name, messages=MESSAGES)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == engine_client.max_model_len


def test_model_is_optional_vllm_style(http):
    r = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_models(openai_client, model_name, engine_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [model_name]
    assert models.data[0].model_extra["max_model_len"] == engine_client.max_model_len
    assert openai_client.models.retrieve(model_name).id == model_name
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")


# ----------------------------------------------------------------- completions


def test_completion_text(openai_client, model_name, is_fake):
    r = openai_client.completions.create(model=model_name, prompt="abcdef", max_tokens=4,
                                         temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.usage.completion_tokens <= 4 and r.choices[0].finish_reason in ("stop", "length")
    if is_fake:
        assert r.choices[0].text == "abcd" and r.usage.prompt_tokens == 6


def test_completion_batch_and_n(openai_client, model_name, is_fake):
    r = openai_client.completions.create(model=model_name, prompt=["abc", "xyz"], n=2,
                                         max_tokens=3, temperature=0)
    assert [c.index for c in sorted(r.choices, key=lambda c: c.index)] == [0, 1, 2, 3]
    if is_fake:
        texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
        assert texts == ["abc", "abc", "xyz", "xyz"]
        assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 12


def test_completion_token_id_prompts(openai_client, model_name, engine_client):
    ids = engine_client.tokenizer.encode("hello there", add_special_tokens=False)
    one = openai_client.completions.create(model=model_name, prompt=ids, max_tokens=3)
    assert one.usage.prompt_tokens == len(ids)
    two = openai_client.completions.create(model=model_name, prompt=[ids, ids[:3]], max_tokens=2)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == len(ids) + 3


def test_completion_echo(openai_client, model_name):
    r = openai_client.completions.create(model=model_name, prompt="echo me", max_tokens=3,
                                         echo=True)
    assert r.choices[0].text.startswith("echo me")


def test_completion_logprobs_legacy(openai_client, model_name):
    r = openai_client.completions.create(model=model_name, prompt="abcdef", max_tokens=4,
                                         logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_completion_streaming(openai_client, model_name):
    chunks = list(openai_client.completions.create(
        model=model_name, prompt="abcdef", max_tokens=5, stream=True, temperature=0,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 5
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    whole = openai_client.completions.create(model=model_name, prompt="abcdef", max_tokens=5,
                                             temperature=0)
    assert text == whole.choices[0].text
