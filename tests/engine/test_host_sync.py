"""The host-synchronisation budget (issue 12): no device->host conversion
inside a model forward, and at most two per engine step (the target's
results, the drafter's drafts), with and without speculation.

Counted on CPU by instrumenting the ways tensor values reach Python
(tests/engine/host_sync.py); on CUDA tests/gpu/gpu_check.py (tools/gpu_check.sh) reruns this file.
"""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.engine.host_sync import SyncCounter
from tests.tiny_model import make_tiny_model_dir

MAX_SYNCS_PER_STEP = 2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):",
           "The quick brown fox jumps over the lazy dog. The quick brown",
           "one two three four one two three four one two",
           "Hello"]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
          SamplingParams(temperature=0.8, top_k=40, max_tokens=12, ignore_eos=True),
          SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True, logprobs=2),
          SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=1)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("sync-target"), seed=3)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("sync-draft"), seed=11, num_layers=1)


def make_engine(model_dir, method, policy, draft_model=None) -> LLMEngine:
    config = EngineConfig(
        model=str(model_dir), dtype="float32", device=DEVICE,
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, draft_model=draft_model,
                                      policy=policy))
    # Flat: every draft pays, so the adaptive policy verifies even the random
    # draft model's unlikely drafts (the syncs of verification are counted).
    return LLMEngine(config, step_cost=StepCostModel.flat())


def count_step_syncs(engine: LLMEngine) -> tuple[list[int], int]:
    """Run every prompt to completion; per-step sync counts and the count
    inside model forwards (target and drafter)."""
    for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
        engine.add_request(f"r{i}", engine.tokenizer.encode(prompt), params)
    per_step = []
    with SyncCounter() as counter:
        models = {id(engine.loaded.model): engine.loaded.model}
        drafter_model = getattr(engine.drafter, "model", None)
        if drafter_model is not None:
            models[id(drafter_model)] = drafter_model
        for model in models.values():
            counter.region(model, "forward", "forward")
            counter.region(model, "compute_logits", "forward")
        while engine.has_unfinished():
            before = counter.total
            engine.step()
            per_step.append(counter.total - before)
        assert not engine.take_failures()
    return per_step, counter.regions["forward"]


CASES = [("none", "static"), ("ngram", "static"), ("ngram", "adaptive"),
         ("draft-model", "static"), ("draft-model", "adaptive")]


@pytest.mark.parametrize("method,policy", CASES)
def test_host_sync_budget(model_dir, draft_dir, method, policy):
    engine = make_engine(model_dir, method, policy, str(draft_dir) if method == "draft-model" else None)
    per_step, in_forward = count_step_syncs(engine)
    assert in_forward == 0
    assert max(per_step) <= MAX_SYNCS_PER_STEP, per_step
    if method != "none":
        assert engine.stats.num_drafts > 0


def test_counter_sees_conversions():
    """The instrument itself: each way of reading values counts."""
    x = torch.arange(4)
    with SyncCounter() as counter:
        x.tolist(), x[0].item(), int(x[1]), float(x[2]), bool(x[3]), x.nonzero(), x[x > 1]
        torch.repeat_interleave(x, x)
        x.numpy()
    assert counter.total == 9
    assert x.tolist() == [0, 1, 2, 3]  # patches are undone
