"""The target's own responses, generated through LLMEngine (resumable)."""
from __future__ import annotations

from engine.config import CacheConfig, SchedulerConfig
from engine.spec.training.generate import engine_for
from scheduler.request import SamplingParams


def test_generation_resumes_and_matches_plain_decoding(engine, samples):
    assert [s.id for s in samples] == [f"toy/{i}" for i in range(20)]
    assert len(set(s.id for s in samples)) == 20
    again = engine.generate([samples[3].prompt_ids], SamplingParams(temperature=0.0, max_tokens=40))[0]
    assert again == samples[3].response_ids


def test_engine_for_runs_the_loaded_target_in_its_dtype(tiny_target):
    engine = engine_for(tiny_target, CacheConfig(block_size=16, num_blocks=8), SchedulerConfig(max_num_seqs=2))
    assert engine.loaded is tiny_target
    assert engine.config.dtype == str(next(tiny_target.model.parameters()).dtype).removeprefix("torch.")
    assert engine.drafter is None
