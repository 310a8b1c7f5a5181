"""The offline evaluator: the teacher-forced simulation agrees with real
decoding, and real decoding is the server's own engine step."""
from __future__ import annotations

from dataclasses import replace

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.outputs import RequestOutput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.training.evaluate import (SpecResult, _record_verification, speculative_decode,
                                           teacher_forced_simulation)
from engine.spec.training.calibrate import BlockRecord
from engine.spec.training.features import collect_features
from engine.spec.training.generate import Sample
from scheduler.drafts import DraftBlock
from scheduler.request import SamplingParams
from tests.engine.spec.conftest import make_head

BLOCK = 4


def test_teacher_forced_tau_equals_real_greedy_decoding(tiny_target, samples, tmp_path):
    """On the target's own greedy output, the cheap simulation reproduces
    real speculative decoding step for step."""
    head = make_head("dspark", tiny_target, BLOCK, seed=1)
    prompts = [s.prompt_ids for s in samples[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=30)
    real = speculative_decode(tiny_target, head, prompts, params)
    plain = [s.response_ids[:30] for s in samples[:4]]
    decoded = [Sample(f"toy/{i}", "toy", p, r) for i, (p, r) in enumerate(zip(prompts, plain))]
    cached = collect_features(tiny_target, decoded, head.config.aux_layers, str(tmp_path), progress=False)
    simulated = teacher_forced_simulation(head, cached)
    assert simulated.num_steps == real.num_steps and simulated.num_emitted == real.num_emitted
    assert [r.num_accepted for r in simulated.records] == [r.num_accepted for r in real.records]
    assert real.tau >= 1.0


def test_a_walk_s_records_say_which_sequence_and_anchor_they_came_from(tiny_target, samples, tmp_path):
    """Each teacher-forced record's origin is (sequence number in the set,
    anchor position): a sequence's anchors start at its first trained
    token and advance by what each block emitted."""
    head = make_head("dspark", tiny_target, BLOCK, seed=1)
    cached = collect_features(tiny_target, samples[:5], head.config.aux_layers, str(tmp_path), progress=False)
    result = teacher_forced_simulation(head, cached, batch=2)  # sequence numbers run across batches
    assert len(result.origins) == len(result.records)
    assert {number for number, _ in result.origins} == set(range(5))
    for number in range(5):
        mine = [(anchor, record) for (n, anchor), record in zip(result.origins, result.records) if n == number]
        anchors = [anchor for anchor, _ in mine]
        assert anchors[0] == cached.sequence(number).first_trainable
        assert all(later == anchor + record.num_accepted + 1
                   for (anchor, record), later in zip(mine, anchors[1:]))


def test_sampled_decoding_reports_valid_records(tiny_target, samples):
    head = make_head("eagle3", tiny_target, BLOCK, seed=2)
    result = speculative_decode(tiny_target, head, [s.prompt_ids for s in samples[:3]],
                                SamplingParams(temperature=1.0, max_tokens=20, seed=5))
    assert result.num_steps > 0 and 1.0 <= result.tau <= BLOCK + 1
    assert all(0 <= r.num_accepted <= len(r.confidences) <= BLOCK for r in result.records)
    # A head's records carry its distributions' peaks (EAGLE-3's confidences are those peaks).
    assert all(r.peaks == r.confidences for r in result.records)
    report = result.summary(BLOCK)
    assert 0 <= report["ece_survival"] <= 1


def test_offline_figures_are_the_servers(tiny_dir, tiny_target, samples):
    """The evaluator's records are what an LLMEngine serving the same head
    (static policy, same seeds) counts: steps, accepted drafts per position."""
    head = make_head("dflash", tiny_target, BLOCK, seed=4)
    prompts = [s.prompt_ids for s in samples[4:7]]
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=0)
    result = speculative_decode(tiny_target, head, prompts, params, seed=9)
    config = EngineConfig(model=str(tiny_dir), cache=CacheConfig(block_size=16, num_blocks=64),
                          scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=1024),
                          speculative=SpeculativeConfig(num_speculative_tokens=BLOCK, policy="static"))
    engine = LLMEngine(config, loaded=tiny_target, drafter=HeadDrafter(head))
    engine.generate(prompts, [replace(params, seed=9 + i) for i in range(len(prompts))])
    stats = engine.stats
    assert result.num_steps == stats.num_drafts > 0
    assert sum(r.num_accepted for r in result.records) == stats.num_accepted_tokens
    assert sum(len(r.confidences) for r in result.records) == stats.num_draft_tokens
    assert result.accepted_per_position == stats.accepted_per_position[: len(result.accepted_per_position)]
    assert result.tau == pytest.approx(stats.mean_accepted_length)


def test_a_verification_without_its_proposal_fails_loudly():
    result = SpecResult()
    counts = {}
    first = RequestOutput("r", [1, 2], "", False, None, 3, 2, num_spec_steps=1, num_draft_tokens=3,
                          num_accepted_tokens=1)
    proposed = DraftBlock([5, 6, 7, 8], [0.9, 0.5, 0.4, 0.3], peaks=[0.8, 0.6, 0.5, 0.2])
    _record_verification(result, first, {"r": proposed}, counts)
    assert (result.num_steps, result.num_emitted) == (1, 2)
    assert result.records[0] == BlockRecord([0.9, 0.5, 0.4], 1, [0.8, 0.6, 0.5])  # the verified drafts' share
    plain = RequestOutput("r", [3], "", False, None, 3, 3, num_spec_steps=1, num_draft_tokens=3,
                          num_accepted_tokens=1)
    _record_verification(result, plain, {}, counts)  # no verification this step: a plain step
    assert (result.num_steps, result.num_plain_steps) == (1, 1)
    again = RequestOutput("r", [4], "", False, None, 3, 4, num_spec_steps=2, num_draft_tokens=5,
                          num_accepted_tokens=1)
    with pytest.raises(RuntimeError, match="proposed"):
        _record_verification(result, again, {}, counts)


@pytest.mark.parametrize("drafter", ["ngram", "hybrid", "head"])
def test_every_decode_step_counts_in_tau(tiny_target, samples, drafter):
    """Steps where the drafter proposed nothing (n-gram without a match)
    count as one-token steps in tokens_per_step: the tokens of all decode
    steps plus each request's first token (from prefill) are every token
    generated."""
    head = make_head("dspark", tiny_target, BLOCK, seed=3)
    prompts = [s.prompt_ids for s in samples[:3]]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    result = speculative_decode(tiny_target, head, prompts, params, drafter=drafter)
    assert result.num_emitted + result.num_plain_steps + len(prompts) == 24 * len(prompts)
    assert result.num_steps == len(result.records)
    assert result.tokens_per_step <= result.tau
    if drafter == "ngram":
        assert result.num_plain_steps > 0
