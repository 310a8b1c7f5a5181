"""The engine hands the scheduler its machine counters, and speculation
under a queue, a busy machine and a tight cache changes no token."""
from __future__ import annotations

import pytest

import engine.engine as engine_module
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import DeviceCounters, StepCostModel
from scheduler.request import SamplingParams
from tests.engine.test_speculative import GREEDY, PROMPTS, model_dir, reference  # noqa: F401 (fixtures)

BUSY = DeviceCounters(sampled_at=1.0, gpu_other_utilization=0.7, cpu_wait_fraction=0.2)


class FixedSource:
    def read(self) -> DeviceCounters:
        return BUSY


@pytest.fixture
def busy_machine(monkeypatch):
    monkeypatch.setattr(engine_module, "source_for_device", lambda device: FixedSource())


def loaded_engine(model_dir, num_blocks=256, budget=64, max_num_seqs=16, machine_counters=True) -> LLMEngine:
    config = EngineConfig(machine_counters=machine_counters,
        model=str(model_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                  max_model_len=512),
        speculative=SpeculativeConfig(method="self-draft", num_speculative_tokens=5, self_draft_layers=1))
    # A flat cost: drafts pay whenever budget and KV let them in.
    engine = LLMEngine(config, step_cost=StepCostModel.flat())
    engine.device_sampler.sample_once()  # do not wait for the sampler's first tick
    return engine


def test_engine_passes_the_sampled_counters_and_reports_the_load(model_dir, busy_machine):
    engine = loaded_engine(model_dir)
    engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY)
    load = engine.snapshot_stats().load
    assert load.device == BUSY and load.busy == pytest.approx(0.7)
    assert load.decode_tokens > 0 and load.prefill_tokens > 0
    assert load.draft_tokens == engine.stats.num_draft_tokens > 0


def test_without_machine_counters_the_policy_sees_no_outside_load(model_dir, busy_machine):
    engine = loaded_engine(model_dir, machine_counters=False)
    engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY)
    assert engine.device_sampler.source is None
    load = engine.snapshot_stats().load
    assert load.device is None and load.busy == 0.0
    assert load.draft_tokens > 0


@pytest.mark.parametrize("budget, max_num_seqs, num_blocks", [(16, 16, 256), (64, 2, 256), (32, 16, 20)])
def test_queue_busy_machine_and_tight_cache_change_no_token(model_dir, reference, busy_machine,
                                                           budget, max_num_seqs, num_blocks):
    """All prompts at once: admissions compete with drafts for the budget
    (16), requests queue for a seat (2 at a time), or for KV blocks (20)."""
    engine = loaded_engine(model_dir, num_blocks=num_blocks, budget=budget, max_num_seqs=max_num_seqs)
    assert engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY) == reference
    engine.scheduler.block_manager.check_integrity()
    assert engine.snapshot_stats().load.draft_tokens > 0


def test_seeded_sampling_under_load_stays_within_the_vocabulary(model_dir, busy_machine):
    engine = loaded_engine(model_dir, budget=16)
    params = SamplingParams(temperature=0.9, max_tokens=12, seed=5, ignore_eos=True)
    outputs = engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], params)
    assert all(len(out) == 12 for out in outputs)
