"""`specserve serve --speculative-method eagle3 --draft-model
checkpoints/eagle3-smollm2` with every other flag at its default (8
speculative tokens, the adaptive policy with a profiled step cost) serves
losslessly. The checkpoint drafts 7 tokens per block; k = 8 used to kill
the engine. Greedy requests match plain decoding token for token, and so
does a seeded sampled request; an unseeded one runs alongside."""
from __future__ import annotations

import dataclasses
import os

import pytest

from cli.main import build_parser
from cli.serve import engine_config_from_args
from engine.config import SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.request import SamplingParams
from tests.engine.spec.heads.test_committed_heads import smollm2  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(ROOT, "checkpoints", "eagle3-smollm2")

pytestmark = pytest.mark.slow

QUESTIONS = ["def fib(n):", "Name three colours of the rainbow."]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
          SamplingParams(temperature=0.8, top_p=0.95, seed=1234, max_tokens=24, ignore_eos=True)]


def test_eagle3_with_default_flags_is_lossless(smollm2):
    args = build_parser().parse_args(["serve", "--speculative-method", "eagle3", "--draft-model", CHECKPOINT])
    args.model, args.device = smollm2.path, "cpu"  # what `serve` resolves them to here
    config = engine_config_from_args(args)
    assert config.speculative.num_speculative_tokens == 8 and config.speculative.policy == "adaptive"
    engine = LLMEngine(config, loaded=smollm2)  # the real start-up, step-cost profile included
    assert engine.scheduler.drafting.max_tokens == 7  # clamped to the checkpoint's block
    tok = engine.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    requests = [(p, params) for p in prompts for params in PARAMS]
    unseeded = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    outputs = engine.generate([p for p, _ in requests] + [prompts[0]], [q for _, q in requests] + [unseeded])
    assert engine.stats.num_draft_tokens > 0 and engine.stats.num_accepted_tokens > 0
    assert len(outputs[-1]) == 24
    plain = LLMEngine(dataclasses.replace(config, speculative=SpeculativeConfig()), loaded=smollm2)
    assert outputs[:-1] == [plain.generate([p], q)[0] for p, q in requests]
