"""Per-token provenance (engine/trace.py) through the whole engine.

A scripted drafter proposes the target's own greedy continuation and spoils
one draft on chosen steps, so every source (accepted, corrected, bonus,
plain) shows up at known places; the traces must agree with the engine's
speculation counters, the emitted tokens and the streamed text.
"""
from __future__ import annotations

import pytest

from engine.trace import StepLoad, StepTrace, TokenSource
from scheduler.drafts import DraftBlock
from scheduler.request import SamplingParams
from tests.engine.test_speculative import StatelessDrafter, make_engine, with_drafter
from tests.tiny_model import make_tiny_model_dir

LOAD = StepLoad(num_requests=1, num_tokens=5, num_waiting=0, step_ms=4.0)
PROMPT = "def add(a, b):\n    return a + b\n\ndef add(a, b):"
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def test_sources_of_a_step():
    assert StepTrace(0, 0, "", LOAD, ("a",)).sources() == [TokenSource.PLAIN]
    assert StepTrace(3, 1, "ngram", LOAD, ("a", "b")).sources() == [
        TokenSource.ACCEPTED, TokenSource.CORRECTED]
    assert StepTrace(2, 2, "ngram", LOAD, ("a", "b", "c")).sources() == [
        TokenSource.ACCEPTED, TokenSource.ACCEPTED, TokenSource.BONUS]
    # A stop inside the accepted block keeps a prefix: the sources are its prefix.
    assert StepTrace(4, 4, "ngram", LOAD, ("a", "b")).sources() == [TokenSource.ACCEPTED] * 2
    assert LOAD.steps_per_second == pytest.approx(250.0)


class ScriptedDrafter(StatelessDrafter):
    """Proposes 3 tokens of the reference continuation; on every other
    proposal the second one is wrong (-> accepted, corrected), otherwise
    all are right (-> accepted x3, bonus)."""

    name = "scripted"

    def __init__(self, reference: list[int], vocab: int):
        self.reference, self.vocab, self.calls = reference, vocab, 0

    def propose(self, inputs):
        out = {}
        for item in inputs:
            done = item.request.num_output_tokens
            follow = list(self.reference[done: done + min(3, item.max_tokens)])
            if not follow:
                continue
            self.calls += 1
            if self.calls % 2 and len(follow) > 1:
                follow[1] = (follow[1] + 1) % self.vocab
            out[item.request.request_id] = DraftBlock(follow, [0.9] * len(follow), None, self.name)
        return out


@pytest.fixture(scope="module")
def plain_engine(tmp_path_factory):
    return make_engine(make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), seed=3), "none")


def run(engine, prompt_ids, params):
    engine.add_request("r", prompt_ids, params)
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.request_id == "r"]
    return outputs


def test_traces_match_the_tokens_text_and_counters(plain_engine):
    prompt = plain_engine.tokenizer.encode(PROMPT)
    reference = plain_engine.generate([prompt], GREEDY)[0]
    engine = with_drafter(plain_engine, ScriptedDrafter(reference, plain_engine.model_config.vocab_size))
    outputs = run(engine, prompt, GREEDY)
    assert [t for o in outputs for t in o.new_token_ids] == reference  # still lossless
    traced = [o for o in outputs if o.trace is not None]
    sources = [s for o in traced for s in o.trace.sources()]
    assert {TokenSource.ACCEPTED, TokenSource.CORRECTED, TokenSource.BONUS,
            TokenSource.PLAIN} <= set(sources)
    for out in traced:
        assert len(out.trace.token_texts) == len(out.new_token_ids)
        assert out.trace.drafter == ("scripted" if out.trace.num_verified else "")
        assert out.trace.load.num_requests == 1 and out.trace.load.step_ms > 0
    last = outputs[-1]
    assert sum(o.trace.num_verified > 0 for o in traced) == last.num_spec_steps
    assert sum(o.trace.num_accepted for o in traced) == last.num_accepted_tokens
    assert sources.count(TokenSource.ACCEPTED) == last.num_accepted_tokens
    text = "".join(o.new_text for o in outputs)
    assert "".join(t for o in traced for t in o.trace.token_texts) == text


def test_a_stop_inside_an_accepted_block_keeps_a_prefix_of_the_sources(plain_engine):
    prompt = plain_engine.tokenizer.encode(PROMPT)
    reference = plain_engine.generate([prompt], GREEDY)[0]
    stop_at = 5
    params = SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[reference[stop_at]])
    engine = with_drafter(plain_engine, ScriptedDrafter(reference, plain_engine.model_config.vocab_size))
    outputs = run(engine, prompt, params)
    tokens = [t for o in outputs for t in o.new_token_ids]
    assert tokens == reference[: reference.index(reference[stop_at]) + 1]
    # Tokens 3-5 are accepted drafts of a fully right block; the stop at
    # token 5 drops the bonus token that block would have earned.
    last = outputs[-1].trace
    assert (last.num_verified, last.num_accepted) == (3, 3)
    assert last.sources() == [TokenSource.ACCEPTED] * 3
    texts = [t for o in outputs if o.trace for t in o.trace.token_texts]
    assert len(texts) == len(tokens)
    assert "".join(texts) == "".join(o.new_text for o in outputs)
