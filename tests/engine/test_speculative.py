"""Speculative decoding through the whole engine must not change a token.

Greedy, float32 on CPU: every drafter (including an adversarial one that
proposes random tokens and an oracle that proposes the target's own tokens)
gives token-for-token the output of plain decoding, alone and in mixed
concurrent batches, with stop strings, max_tokens and logprobs.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.base import Drafter
from scheduler.drafts import DraftBlock
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

PROMPTS = [
    "def add(a, b):\n    return a + b\n\ndef add(a, b):",
    "The quick brown fox jumps over the lazy dog. The quick brown",
    "Hello",
    "one two three four one two three four one two",
    "In the beginning there was nothing but a small server and a large model.",
    "x = [1, 2, 3]\nfor i in x:\n    print(i)\nfor i in x:",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    # Same tokenizer, different random weights: a poor but valid draft model.
    return make_tiny_model_dir(tmp_path_factory.mktemp("draft"), seed=11, num_layers=1)


def make_engine(model_dir, method="none", k=4, draft_model=None, num_blocks=256, policy="adaptive",
                cost=None, **sched):
    config = EngineConfig(
        model=str(model_dir), dtype="float32", machine_counters=False,
        cache=CacheConfig(block_size=8, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=sched.get("max_num_seqs", 16),
                                  max_num_batched_tokens=sched.get("budget", 64), max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=k, draft_model=draft_model,
                                      self_draft_layers=1 if method == "self-draft" else 0,
                                      policy=policy),
    )
    return LLMEngine(config, step_cost=cost or StepCostModel.flat())


def encode_all(engine):
    return [engine.tokenizer.encode(p) for p in PROMPTS]


GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Plain decoding, one request at a time."""
    engine = make_engine(model_dir)
    return [engine.generate([p], GREEDY)[0] for p in encode_all(engine)]


class StatelessDrafter(Drafter):
    """A test drafter that keeps no per-request state."""

    def absorb(self, request, hidden):
        pass

    def forget(self, request_ids):
        pass


class OracleDrafter(StatelessDrafter):
    """Proposes the target's own greedy continuation (everything accepted)."""

    def __init__(self, references: dict[tuple, list[int]]):
        self.references = references

    def propose(self, inputs):
        out = {}
        for item in inputs:
            req = item.request
            ref = self.references[tuple(req.prompt_token_ids)]
            follow = ref[req.num_output_tokens: req.num_output_tokens + item.max_tokens]
            if follow:
                out[req.request_id] = DraftBlock(follow, [0.9] * len(follow))
        return out


class RandomDrafter(StatelessDrafter):
    """Adversarial: random tokens with random draft distributions."""

    def __init__(self, vocab: int, seed: int = 0):
        self.vocab, self.rng = vocab, random.Random(seed)

    def propose(self, inputs):
        out = {}
        for item in inputs:
            k = self.rng.randint(1, item.max_tokens)
            tokens = [self.rng.randrange(self.vocab) for _ in range(k)]
            probs = torch.softmax(torch.randn(k, self.vocab) * 3, dim=-1)
            out[item.request.request_id] = DraftBlock(tokens, [0.5] * k, probs)
        return out


def with_drafter(engine, drafter):
    """An engine like `engine` (same weights and config) drafting with `drafter`."""
    return LLMEngine(engine.config, loaded=engine.loaded, step_cost=StepCostModel.flat(),
                     drafter=drafter)


@pytest.mark.parametrize("method", ["ngram", "self-draft", "draft-model"])
def test_greedy_drafters_equal_plain_decoding_alone_and_batched(model_dir, draft_dir, reference, method):
    engine = make_engine(model_dir, method, draft_model=str(draft_dir) if method == "draft-model" else None)
    prompts = encode_all(engine)
    alone = [engine.generate([p], GREEDY)[0] for p in prompts]
    assert alone == reference
    batched = engine.generate(prompts, GREEDY)
    assert batched == reference
    assert engine.stats.num_drafts > 0
    engine.scheduler.block_manager.check_integrity()


def test_oracle_drafter_accepts_everything_and_matches(model_dir, reference):
    engine = make_engine(model_dir, "ngram", k=5)
    prompts = encode_all(engine)
    engine = with_drafter(engine, OracleDrafter({tuple(p): r for p, r in zip(prompts, reference)}))
    assert engine.generate(prompts, GREEDY) == reference
    stats = engine.stats
    assert stats.num_accepted_tokens == stats.num_draft_tokens > 0
    # Every verification step emitted all drafts plus the bonus token.
    assert stats.mean_accepted_length > 4


def test_random_drafter_is_rejected_but_output_unchanged(model_dir, reference):
    engine = make_engine(model_dir, "ngram", k=6)
    engine = with_drafter(engine, RandomDrafter(engine.model_config.vocab_size))
    assert engine.generate(encode_all(engine), GREEDY) == reference
    assert engine.stats.num_draft_tokens > 0


def test_mixed_batch_speculative_and_plain_requests(model_dir, reference):
    engine = make_engine(model_dir, "self-draft")
    prompts = encode_all(engine)
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, speculative=i % 2 == 0)
              for i in range(len(prompts))]
    assert engine.generate(prompts, params) == reference


def test_tight_kv_cache_preempts_and_still_matches(model_dir, reference):
    engine = make_engine(model_dir, "self-draft", num_blocks=24, budget=32)
    assert engine.generate(encode_all(engine), GREEDY) == reference
    engine.scheduler.block_manager.check_integrity()


def test_max_tokens_inside_an_accepted_block_cuts_exactly(model_dir, reference):
    engine = make_engine(model_dir, "ngram", k=6)
    prompts = encode_all(engine)
    engine = with_drafter(engine, OracleDrafter({tuple(p): r for p, r in zip(prompts, reference)}))
    for max_tokens in (1, 2, 5, 7):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        assert engine.generate(prompts, params) == [r[:max_tokens] for r in reference]


def test_stop_string_inside_an_accepted_block(model_dir, reference):
    engine = make_engine(model_dir, "ngram", k=6)
    prompts = encode_all(engine)
    engine = with_drafter(engine, OracleDrafter({tuple(p): r for p, r in zip(prompts, reference)}))
    tok = engine.tokenizer
    full_text = tok.decode(reference[0])
    stop = full_text[len(full_text) // 2: len(full_text) // 2 + 2]
    assert stop.strip(), "pick a prompt whose output has text"
    plain = make_engine(model_dir)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=(stop,))
    rid = "stop-check"
    expected = _run_text(plain, rid, prompts[0], params)
    got = _run_text(engine, rid, prompts[0], params)
    assert got == expected
    assert stop not in got[0]


def _run_text(engine, rid, prompt, params):
    engine.add_request(rid, prompt, params)
    text, tokens, reason = "", [], None
    while engine.has_unfinished():
        for out in engine.step():
            text += out.new_text
            tokens += out.new_token_ids
            reason = out.finish_reason or reason
    return text, tokens, reason


def test_logprobs_come_from_the_target(model_dir, reference):
    plain = make_engine(model_dir)
    spec = make_engine(model_dir, "self-draft")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
    prompt = encode_all(plain)[1]
    a = _collect_logprobs(plain, prompt, params)
    b = _collect_logprobs(spec, prompt, params)
    assert [x.token_id for x in a] == [x.token_id for x in b]
    for x, y in zip(a, b):
        assert abs(x.logprob - y.logprob) < 1e-4
        assert [t for t, _ in x.top] == [t for t, _ in y.top]


def _collect_logprobs(engine, prompt, params):
    engine.add_request("lp", prompt, params)
    got = []
    while engine.has_unfinished():
        for out in engine.step():
            assert out.logprobs is not None and len(out.logprobs) == len(out.new_token_ids)
            got += out.logprobs
    return got


def test_seeded_sampling_with_speculation_is_reproducible(model_dir):
    # Seeded requests sample by Gumbel-max with noise keyed by position, so a
    # seed gives the same tokens whatever was verified (tests/engine/test_seeded.py
    # covers every drafter and policy against speculation off).
    engine = make_engine(model_dir, "self-draft", policy="adaptive")
    prompt = encode_all(engine)[0]
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=1234, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    second = engine.generate([prompt], params)[0]
    assert first == second and len(first) == 16


@pytest.mark.parametrize("policy", ["adaptive", "adaptive-async", "static"])
def test_policies_under_a_busy_cost_model_stay_lossless(model_dir, reference, policy):
    """A cost model where extra tokens cost, so lengths vary per request and step."""
    engine = make_engine(model_dir, "self-draft", k=5, policy=policy,
                         cost=StepCostModel.linear(0.01, 0.004))
    assert engine.generate(encode_all(engine), GREEDY) == reference
    if policy != "static":
        counts = engine.verify_policy.stats().verify_length_counts
        assert sum(counts) > 0


def test_verify_policy_off_means_no_speculation(model_dir):
    engine = make_engine(model_dir, "ngram", policy="off")
    assert engine.drafter is None and engine.verify_policy is None
    engine.generate(encode_all(engine)[:2], GREEDY)
    assert engine.stats.num_drafts == 0


@pytest.mark.parametrize("fitted_map", [False, True], ids=["lookup-else-datastore", "the-better-block"])
def test_drafting_from_a_datastore_equals_plain_decoding_alone_and_batched(model_dir, reference, tmp_path,
                                                                           fitted_map):
    """n-gram with a corpus datastore, counted on the target's own outputs
    (accepted drafts) and on random text (rejected ones). Without a fitted
    map prompt lookup is kept to 4-token matches, so most blocks are the
    datastore's; with one, lookup matches from one token and n-gram drafts
    whichever block promises more (at these rates a long corpus context
    beats a one-token match, and loses to a longer one)."""
    import numpy as np

    from engine.spec.datastore import SHARE_BINS, NgramDatastore, build_datastore, tokenizer_fingerprint

    plain = make_engine(model_dir)
    noise = random.Random(0)
    corpus = reference + [[noise.randrange(200) for _ in range(30)] for _ in range(20)]
    path = str(tmp_path / "datastore.safetensors")
    fingerprint = tokenizer_fingerprint(plain.tokenizer.backend.get_vocab())
    datastore: NgramDatastore = build_datastore(corpus, max_n=3, min_count=1, tokenizer=fingerprint)
    if fitted_map:  # rates rising with the share, so that each source wins some steps
        datastore.survival = np.tile(np.linspace(0.05, 0.5, SHARE_BINS, dtype=np.float32), (3, 3, 1))
    datastore.save(path)
    min_n = 1 if fitted_map else 4
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=6, ngram_min=min_n, ngram_max=4,
                             ngram_datastore=path)
    engine = LLMEngine(dataclasses.replace(plain.config, speculative=spec), loaded=plain.loaded,
                       step_cost=StepCostModel.flat())
    prompts = encode_all(engine)
    assert [engine.generate([p], GREEDY)[0] for p in prompts] == reference
    assert engine.generate(prompts * 3, GREEDY) == reference * 3
    sources = engine.stats.spec_by_source
    assert 0 < sources["datastore"].num_accepted_tokens < sources["datastore"].num_draft_tokens
    if fitted_map:  # this tiny target seldom repeats itself: few lookup blocks win, none survive
        assert sources["ngram"].num_draft_tokens > 0
    engine.scheduler.block_manager.check_integrity()


def test_a_datastore_of_another_tokenizer_or_method_is_refused(model_dir, tmp_path):
    from engine.spec.datastore import build_datastore

    path = str(tmp_path / "other.safetensors")
    build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=1, tokenizer="another-vocabulary").save(path)
    plain = make_engine(model_dir)
    spec = SpeculativeConfig(method="ngram", ngram_datastore=path)
    with pytest.raises(ValueError, match="built for tokenizer another-vocabulary"):
        LLMEngine(dataclasses.replace(plain.config, speculative=spec), loaded=plain.loaded,
                  step_cost=StepCostModel.flat())
    with pytest.raises(ValueError, match="ngram and hybrid only"):
        SpeculativeConfig(method="self-draft", ngram_datastore=path)
