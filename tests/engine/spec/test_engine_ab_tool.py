"""tools.engine_ab on a tiny target and head: every method of one run
side by side, ratios to speculation off, the drafters' own figures, and
the hybrid-without-head ablation (n-gram plus the hybrid's own costs) and
n-gram with nothing verified (what the speculative path costs by itself)."""
from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.heads.checkpoint import save_head
from scheduler.request import SamplingParams
from tests.engine.spec.test_head_drafter import make_drafter
from tools import engine_ab
from tools import engine_ab_ablations as ablations


def test_engine_ab_runs_the_methods_interleaved_and_writes_their_figures(tmp_path, tiny_dir, tiny_target):
    save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / "ckpt"))
    methods = ["off", "ngram", "hybrid", "hybrid-nohead", "ngram-noverify"]
    engine_ab.main(["chat", "1,2", "2", "--prompts", "3", "--max-tokens", "5", "--methods", ",".join(methods),
                    "--model", str(tiny_dir), "--draft-model", str(tmp_path / "ckpt"), "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["prompts"] == {"1": 3, "2": 4}  # at least 2 x C, whole batches of C
    for level in ("1", "2"):
        assert list(record["tok_s"][level]) == methods
        assert all(len(rounds) == 2 and min(rounds) > 0 for rounds in record["tok_s"][level].values())
        summary = record["summary"][level]
        assert summary["off"]["ratio_to_off"] == 1.0
        for name in methods:
            ratio = summary[name]["median_tok_s"] / summary["off"]["median_tok_s"]
            assert abs(summary[name]["ratio_to_off"] - ratio) < 0.01 * ratio
    stats = record["drafter_stats"]
    assert stats["off"] == {} and stats["ngram"] == {}
    assert stats["hybrid"]["chosen"]["dspark"] > 0  # the head ran and was chosen
    assert stats["hybrid-nohead"]["chosen"]["dspark"] == 0
    verification = record["verification"]
    assert verification["off"]["verified_blocks"] == 0 and verification["off"]["steps"] > 0
    for figures in verification.values():
        lengths = figures["verify_length_counts"]
        assert sum(length * count for length, count in enumerate(lengths)) == figures["drafts_verified"]
    assert verification["ngram-noverify"]["drafts_verified"] == 0


def test_never_verify_keeps_drafting_but_verifies_nothing(tiny_dir):
    """The `ngram-noverify` change on an engine whose policy would verify
    every draft (static): n-gram still proposes, nothing is verified."""
    spec = SpeculativeConfig(method="ngram", policy="static", num_speculative_tokens=4)
    config = EngineConfig(model=str(tiny_dir), speculative=spec, machine_counters=False,
                          cache=CacheConfig(block_size=8, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256))
    prompt = [5, 6, 7, 8] * 6  # n-gram matches at once
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = LLMEngine(config)
    patched = LLMEngine(config, loaded=plain.loaded)
    ablations.never_verify(patched)
    proposed = []
    propose = patched.drafter.propose
    patched.drafter.propose = lambda inputs: proposed.append(propose(inputs)) or proposed[-1]
    assert patched.generate([prompt], params) == plain.generate([prompt], params)
    assert plain.snapshot_stats().num_draft_tokens > 0
    assert patched.snapshot_stats().num_draft_tokens == 0 and any(proposed)


def test_streams_send_their_next_prompt_as_soon_as_their_answer_finished(tiny_dir):
    """Two streams over answers of 8, 2, 2, 2 and 2 tokens: the short ones
    follow each other beside the long one (about 8 decode steps), where
    batches of two would wait for the long one first (about 12)."""
    config = EngineConfig(model=str(tiny_dir), speculative=SpeculativeConfig(method="none"), machine_counters=False,
                          cache=CacheConfig(block_size=8, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256))
    prompts = [[5, 6, 7, 8 + i] for i in range(5)]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (8, 2, 2, 2, 2)]
    streamed = LLMEngine(config)
    in_flight, add = [], streamed.add_request
    streamed.add_request = lambda *args: (in_flight.append(len(streamed.requests)), add(*args))
    run = engine_ab.run_streams(streamed, prompts, 2, params)
    assert run.tokens == 16 and max(in_flight) == 1 and len(in_flight) == 5  # never more than 2 at once
    # The steady part ends with the step that sent the last prompt: its 2
    # tokens and the long answer's tail are the drain.
    assert 6 <= run.steady_tokens <= run.tokens - 2 - 1 and 0 < run.steady_seconds < run.seconds
    with pytest.raises(ValueError, match="no steady part"):
        engine_ab.run_streams(streamed, prompts[:2], 2, params)
    batched = LLMEngine(config, loaded=streamed.loaded)
    for i in range(0, 5, 2):
        batched.generate(prompts[i:i + 2], params[i:i + 2])
    assert streamed.snapshot_stats().num_steps + 3 <= batched.snapshot_stats().num_steps, \
        (streamed.snapshot_stats().num_steps, batched.snapshot_stats().num_steps)


def test_calibrated_twice_hands_the_hybrids_blocks_over_unflagged():
    """`hybrid-twice`: the same blocks and confidences, without the flag that
    tells the policy they are calibrated already."""
    from scheduler.drafts import DraftBlock

    block = DraftBlock([3, 4], [0.8, 0.7], source="ngram", calibrated=True)
    drafter = SimpleNamespace(_calibrated=lambda blocks, raw: {"r": block})
    ablations.calibrated_twice(SimpleNamespace(drafter=drafter))
    handed = drafter._calibrated({}, {})["r"]
    assert not handed.calibrated
    assert (handed.token_ids, handed.confidences, handed.source) == ([3, 4], [0.8, 0.7], "ngram")


def test_the_own_map_ablation_hands_every_block_over_as_the_hybrid_mapped_it():
    """`hybrid-ds-own-map`: the hybrid before phase 15, an n-gram block
    handed to the policy with the hybrid's per-source calibrated
    confidences and flagged, as a head block is."""
    from engine.spec.hybrid import HybridDrafter
    from engine.spec.ngram import NgramDrafter
    from scheduler.drafts import DraftBlock
    from tests.engine.spec.test_hybrid import _StubHead

    drafter = HybridDrafter(_StubHead(), NgramDrafter(1, 4))
    block = DraftBlock([3, 4], [0.5, 0.4], source="datastore", calibrated=True)
    drafted = DraftBlock([3, 4], [0.9, 0.8], source="datastore")
    assert drafter._as_handed(block, drafted).confidences == [0.9, 0.8]
    ablations.ngram_blocks_mapped_by_the_hybrid(SimpleNamespace(drafter=drafter))
    assert drafter._as_handed(block, drafted) is block


def test_the_one_payoff_ablation_keeps_a_single_payoff_for_every_band():
    """`hybrid-ds-one-payoff`: the hybrid before phase 24, one head payoff
    whatever n-gram's block on offer is expected to get, and an accepted
    draft worth a whole step."""
    from engine.spec.hybrid import HybridDrafter
    from engine.spec.ngram import NgramDrafter
    from tests.engine.spec.test_hybrid import _StubHead

    drafter = HybridDrafter(_StubHead(), NgramDrafter(1, 4))
    assert len(drafter.payoffs) > 1 and drafter._bucket(5.0) > 0
    ablations.one_payoff_for_every_band(SimpleNamespace(drafter=drafter))
    assert len(drafter.payoffs) == 1 and drafter._bucket(0.0) == drafter._bucket(5.0) == 0
    assert drafter.value_share_of_step is False


def test_a_candidate_head_runs_beside_the_committed_one(tmp_path, tiny_dir, tiny_target):
    """`--candidate`: `hybrid-candidate` is the hybrid over the other
    checkpoint, in the same run; asking for it without one fails loudly."""
    for name in ("ckpt", "other"):
        save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / name))
    engines = engine_ab.build_engines(["hybrid", "hybrid-candidate"], str(tmp_path / "ckpt"), str(tiny_dir),
                                      candidate=str(tmp_path / "other"))
    assert engines["hybrid"].config.speculative.draft_model == str(tmp_path / "ckpt")
    assert engines["hybrid-candidate"].config.speculative.draft_model == str(tmp_path / "other")
    assert engines["hybrid-candidate"].config.speculative.method == "hybrid"
    with pytest.raises(SystemExit, match="pass --candidate"):
        engine_ab.build_engines(["hybrid-candidate"], str(tmp_path / "ckpt"), str(tiny_dir))


def test_a_candidate_datastore_runs_beside_the_shipped_one(tmp_path, tiny_dir):
    """`--candidate-datastore`: `ngram-ds-candidate` is n-gram + datastore over
    the other file, in the same run; asking for it without one fails loudly
    and names the flag."""
    configs = engine_ab.speculative_configs("ckpt", candidate_datastore="other.safetensors")
    assert configs["ngram-ds-candidate"] == replace(configs["ngram-ds"], ngram_datastore="other.safetensors")
    assert configs["hybrid-ds-candidate"] == replace(configs["hybrid-ds"], ngram_datastore="other.safetensors")
    assert "dspark-candidate" not in configs
    with pytest.raises(SystemExit, match="pass --candidate-datastore"):
        engine_ab.build_engines(["ngram-ds-candidate"], "ckpt", str(tiny_dir))
    # --datastore: the baseline's datastore is another file, the candidate's unchanged
    moved = engine_ab.speculative_configs("ckpt", candidate_datastore="other.safetensors", datastore="old.safetensors")
    assert moved["ngram-ds"].ngram_datastore == moved["hybrid-ds"].ngram_datastore == "old.safetensors"
    assert moved["ngram-ds-candidate"].ngram_datastore == "other.safetensors"
    assert configs["ngram-ds"].ngram_datastore == engine_ab.DATASTORE


def test_lockstep_rounds_pair_every_method_on_the_same_prompts(tmp_path, tiny_dir):
    """--lockstep: each method answers every prompt once per round, and the
    paired ratios are those of each round's own figures."""
    engine_ab.main(["chat", "1", "3", "--prompts", "3", "--max-tokens", "4", "--methods", "off,ngram,ngram16",
                    "--model", str(tiny_dir), "--lockstep", "--versus", "ngram", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["lockstep"] is True
    tok_s, summary = record["tok_s"]["1"], record["summary"]["1"]
    assert all(len(rounds) == 3 for rounds in tok_s.values())
    for name, rounds in tok_s.items():
        ratios = sorted(v / b for v, b in zip(rounds, tok_s["off"]))
        assert summary[name]["paired_ratio_to_off"]["median"] == pytest.approx(ratios[1], abs=1e-3)
        assert summary[name]["paired_ratio_to_off"]["min"] == pytest.approx(ratios[0], abs=1e-3)
        against_ngram = sorted(v / b for v, b in zip(rounds, tok_s["ngram"]))
        assert summary[name]["paired_ratio_to_ngram"]["median"] == pytest.approx(against_ngram[1], abs=1e-3)
    assert summary["off"]["paired_ratio_to_off"] == {"median": 1.0, "min": 1.0, "max": 1.0}


def test_lockstep_engines_take_steps_in_turn_and_answer_every_prompt(tiny_dir):
    """Two engines step alternately (one step each, in turn) until both have
    answered every prompt, one at a time; each step is timed to its engine."""
    config = EngineConfig(model=str(tiny_dir), speculative=SpeculativeConfig(method="none"), machine_counters=False,
                          cache=CacheConfig(block_size=8, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256))
    first = LLMEngine(config)
    engines = {"a": first, "b": LLMEngine(config, loaded=first.loaded)}
    steps, in_flight = [], []
    for name, engine in engines.items():
        step = engine.step
        engine.step = lambda name=name, engine=engine, step=step: (
            steps.append(name), in_flight.append(len(engine.requests)), step())[2]
    prompts = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    runs = engine_ab.run_in_lockstep(engines, prompts, 1, params)
    assert steps[:4] == ["b", "a", "b", "a"]  # round 1 starts with the second method
    assert steps.count("a") == steps.count("b") and max(in_flight) == 1
    assert runs["a"].tokens == runs["b"].tokens == 9 and runs["a"].seconds > 0


def test_lockstep_under_load_keeps_every_methods_streams_busy(tiny_dir):
    """At two streams each engine keeps two requests in flight while prompts
    wait, the engines still stepping in turn; its steady part ends when its
    prompts ran out."""
    config = EngineConfig(model=str(tiny_dir), speculative=SpeculativeConfig(method="none"), machine_counters=False,
                          cache=CacheConfig(block_size=8, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256))
    first = LLMEngine(config)
    engines = {"a": first, "b": LLMEngine(config, loaded=first.loaded)}
    steps, in_flight = [], {"a": [], "b": []}
    for name, engine in engines.items():
        step = engine.step
        engine.step = lambda name=name, engine=engine, step=step: (
            steps.append(name), in_flight[name].append(len(engine.requests)), step())[2]
    prompts = [[5, 6, 7 + i] for i in range(5)]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (4, 2, 2, 2, 2)]
    runs = engine_ab.run_in_lockstep({"a": engines["a"]}, prompts, 0, params, streams=2)
    assert runs["a"].tokens == 12 and max(in_flight["a"]) == 2 and in_flight["a"][0] == 2
    assert 0 < runs["a"].steady_tokens < runs["a"].tokens and runs["a"].steady_seconds < runs["a"].seconds
    steps.clear()
    short = [SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)] * 5
    runs = engine_ab.run_in_lockstep(engines, prompts, 0, short, streams=2)
    assert steps[:4] == ["a", "b", "a", "b"] and runs["a"].tokens == runs["b"].tokens == 10


def test_an_engine_plans_its_attention_tiles_the_old_way_in_its_own_steps_only(tiny_dir, monkeypatch):
    """`off-pow2-tiles`: its forwards tile by power-of-two buckets, the other
    engine's by partition_by_chunks, with the same tokens out."""
    from kernels import invariant_attention
    from tools.attention_tiles import power_of_two_partition

    planners = []
    build = invariant_attention._build_tiles
    monkeypatch.setattr(invariant_attention, "_build_tiles", lambda *args: (
        planners.append(invariant_attention.partition_by_chunks), build(*args))[1])
    first = engine_ab.build_engines(["off-pow2-tiles"], engine_ab.HEAD, str(tiny_dir))["off-pow2-tiles"]
    plain = LLMEngine(first.config, loaded=first.loaded)
    prompts, params = [[5, 6, 7, 8], list(range(9, 80))], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    old = first.generate(prompts, params)
    assert planners and set(planners) == {power_of_two_partition}
    planners.clear()
    assert plain.generate(prompts, params) == old
    assert planners and set(planners) == {invariant_attention.partition_by_chunks}


def test_versus_a_method_that_is_not_run_is_refused(tiny_dir):
    with pytest.raises(SystemExit, match="--versus hybrid"):
        engine_ab.main(["chat", "1", "1", "--methods", "off,ngram", "--versus", "hybrid", "--model", str(tiny_dir)])


def test_the_pooled_prior_ablation_reads_the_same_rates_in_every_follower_class():
    """`ngram-ds-pooled-prior`: a repeated match reads the prior fitted with
    the follower classes pooled, however the suffix went on before."""
    from engine.spec.ngram import FOLLOWED_ONCE, FOLLOWED_VARIOUSLY, NgramDrafter
    from engine.spec.ngram_prior import SURVIVAL_BY_MATCH_AND_POSITION

    engine = SimpleNamespace(drafter=NgramDrafter(1, 4))
    assert engine.drafter.confidences(1, 3, FOLLOWED_ONCE) != engine.drafter.confidences(1, 3, FOLLOWED_VARIOUSLY)
    method, ablate = ablations.ABLATIONS["ngram-ds-pooled-prior"]
    assert method == "ngram-ds"
    ablate(engine)
    for followers in (FOLLOWED_ONCE, FOLLOWED_VARIOUSLY):
        assert engine.drafter.confidences(1, 3, followers) == list(SURVIVAL_BY_MATCH_AND_POSITION[0][:3])


def test_the_uncached_markov_ablation_computes_every_bigram_row_again(tiny_target):
    """`hybrid-ds-markov-uncached`: the served DSpark head's rows as the
    packed product gives them, none kept."""
    import torch

    from tests.engine.spec.conftest import make_head

    head = make_head("dspark", tiny_target, 4, seed=3)
    head.use_inference_kernels()
    engine = SimpleNamespace(drafter=SimpleNamespace(head=SimpleNamespace(head=head)))
    method, ablate = ablations.ABLATIONS["hybrid-ds-markov-uncached"]
    assert method == "hybrid-ds"
    ablate(engine)
    with torch.inference_mode():
        rows = head.markov_bias(torch.tensor([[5, 5], [9, 5]]))
    assert rows.shape == (2, 2, head.output_size) and torch.equal(rows[0, 0], rows[1, 1])
    assert head._markov_rows.used == 0
