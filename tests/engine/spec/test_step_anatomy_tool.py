"""tools.step_anatomy times each part of a step and counts tokens per step
as the engine's own counters do."""
from scheduler.request import SamplingParams
from tools.engine_ab import build_engines, HEAD
from tools.step_anatomy import anatomy


def test_parts_add_up_to_the_step_and_steps_count_what_verification_accepted(tiny_dir):
    engines = build_engines(["off", "ngram"], HEAD, str(tiny_dir))
    tokenizer = engines["off"].tokenizer
    prompts = [tokenizer.encode("one two three four one two three four one two three")] * 2
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    off, ngram = (anatomy(engines[name], prompts, params) for name in ("off", "ngram"))
    assert off["steps"] == off["tokens"] == 2 * 24 and off["tokens_per_step"] == 1.0
    assert off["accepted_drafts"] == 0 and ngram["tokens"] == 2 * 24
    # one request at a time: each step emits one token plus the drafts it accepted
    assert ngram["steps"] == ngram["tokens"] - ngram["accepted_drafts"]
    for result in (off, ngram):
        parts = result["ms_by_part"]
        assert set(parts) == {"schedule", "forward", "update", "draft", "emit", "other"}
        assert abs(sum(parts.values()) - result["ms_per_step"]) < 0.05
        assert parts["forward"] > 0


def test_streams_put_that_many_requests_in_each_step(tiny_dir):
    engine = build_engines(["off"], HEAD, str(tiny_dir))["off"]
    prompts = [engine.tokenizer.encode("one two three four")] * 4
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    result = anatomy(engine, prompts, params, streams=2)
    # two streams of two answers each, every step carrying both streams
    assert result["tokens"] == 4 * 12 and result["steps"] == 2 * 12
