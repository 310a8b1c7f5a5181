"""`specserve serve --speculative-method eagle3 --draft-model
checkpoints/eagle3-smollm2` with every other flag at its default (8
speculative tokens, the adaptive policy with a profiled step cost) serves
losslessly. The checkpoint drafts 7 tokens per block; k = 8 used to kill
the engine. Greedy requests match plain decoding token for token, and so
does a seeded sampled request; an unseeded one runs alongside.

The real start-up profile decides how much the adaptive policy verifies,
and on a loaded host it may rightly verify nothing, so the test that
drafts are verified (and accepted) installs an idle machine's flat step
cost instead of leaving it to the host's load."""
from __future__ import annotations

import dataclasses
import os

import pytest

from cli.main import build_parser
from cli.serve import engine_config_from_args
from engine.config import SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.engine.spec.heads.test_committed_heads import smollm2  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(ROOT, "checkpoints", "eagle3-smollm2")

pytestmark = pytest.mark.slow

QUESTIONS = ["def fib(n):", "Name three colours of the rainbow."]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
          SamplingParams(temperature=0.8, top_p=0.95, seed=1234, max_tokens=24, ignore_eos=True)]
UNSEEDED = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def default_config(smollm2):
    args = build_parser().parse_args(["serve", "--speculative-method", "eagle3", "--draft-model", CHECKPOINT])
    args.model, args.device = smollm2.path, "cpu"  # what `serve` resolves them to here
    config = engine_config_from_args(args)
    assert config.speculative.num_speculative_tokens == 8 and config.speculative.policy == "adaptive"
    return config


@pytest.fixture(scope="module")
def requests(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    return [(p, params) for p in prompts for params in PARAMS]


@pytest.fixture(scope="module")
def plain_outputs(smollm2, default_config, requests):
    plain = LLMEngine(dataclasses.replace(default_config, speculative=SpeculativeConfig()), loaded=smollm2)
    return [plain.generate([p], q)[0] for p, q in requests]


def serve_with_unseeded_alongside(engine, requests):
    outputs = engine.generate([p for p, _ in requests] + [requests[0][0]], [q for _, q in requests] + [UNSEEDED])
    assert len(outputs[-1]) == 24
    return outputs[:-1]


def test_eagle3_with_default_flags_starts_and_is_lossless(smollm2, default_config, requests, plain_outputs):
    engine = LLMEngine(default_config, loaded=smollm2)  # the real start-up, step-cost profile included
    assert engine.scheduler.drafting.max_tokens == 7  # clamped to the checkpoint's block
    assert serve_with_unseeded_alongside(engine, requests) == plain_outputs


def test_eagle3_with_default_flags_verifies_drafts_losslessly(smollm2, default_config, requests, plain_outputs):
    engine = LLMEngine(default_config, loaded=smollm2, step_cost=StepCostModel.flat())
    assert engine.scheduler.drafting.max_tokens == 7
    assert serve_with_unseeded_alongside(engine, requests) == plain_outputs
    assert engine.stats.num_draft_tokens > 0 and engine.stats.num_accepted_tokens > 0
