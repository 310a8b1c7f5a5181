"""The heads committed under checkpoints/ load onto the default model and
serve losslessly through their --speculative-method flag."""
from __future__ import annotations

from dataclasses import replace

import os
import pathlib

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from engine.models.loader import load_model
from engine.packed_files import plain_file
from engine.spec.heads.checkpoint import weights_path
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams

ROOT = str(pathlib.Path(__file__).resolve().parents[4])  # the repository root

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    try:
        default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(f"default model not installed: {exc}")
    return load_model(None)


TOPICS = ["fib", "sort", "rivers", "tea", "maps", "clocks", "bees", "lamps",
          "boats", "parse", "stars", "roads", "bread", "wind", "glass", "trees"]


@pytest.mark.parametrize("method, head", [(m, m) for m in HEAD_METHODS] + [("hybrid", "dspark")])
def test_committed_head_is_lossless_on_smollm2(smollm2, method, head):
    """Greedy output with the committed head (and the hybrid of n-gram and
    the DSpark head) equals speculation off, one request alone and 16 at once."""
    checkpoint = os.path.join(ROOT, "checkpoints", f"{head}-smollm2")
    with plain_file(weights_path(checkpoint)) as weights:  # the limit is on the weights, unpacked
        assert os.path.getsize(weights) <= 25 * 2**20
    spec = SpeculativeConfig(method=method, draft_model=checkpoint, num_speculative_tokens=7,
                             policy="static")
    config = EngineConfig(model=smollm2.path, cache=CacheConfig(num_blocks=512),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=512),
                          speculative=spec)
    engine = LLMEngine(config, loaded=smollm2, step_cost=StepCostModel.flat())
    tok = engine.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": f"def {t}(n):"}]))
               for t in TOPICS]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = engine.generate(prompts[:1], params)
    together = engine.generate(prompts, params)
    assert engine.stats.num_draft_tokens > 0
    plain = LLMEngine(replace(config, speculative=SpeculativeConfig()), loaded=smollm2).generate(prompts, params)
    assert alone == plain[:1]
    assert together == plain
