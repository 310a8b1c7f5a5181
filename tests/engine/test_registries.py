"""Speculative methods, verification policies and model architectures come
from registries: one list each, used by the config, the CLI and the engine."""
from __future__ import annotations

import logging

import pytest

from engine.config import EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.registry import ARCHITECTURES, architecture
from engine.spec.registry import DRAFTERS, NONE, drafter_spec, method_names
from scheduler.load import StepCostModel
from scheduler.policies import policy_names
from scheduler.request import SamplingParams
from tests.engine.test_speculative import StatelessDrafter
from tests.tiny_model import make_tiny_model_dir


def test_builtin_methods_are_registered_once():
    names = method_names()
    assert names[0] == NONE and len(set(names)) == len(names)
    assert {"ngram", "draft-model", "self-draft", "eagle3", "dflash", "dspark", "hybrid"} == set(DRAFTERS)
    assert {n for n in DRAFTERS if drafter_spec(n).needs_draft_model} == {
        "draft-model", "eagle3", "dflash", "dspark", "hybrid"}


def test_cli_choices_come_from_the_registries():
    from cli.main import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    actions = {a.dest: a for a in serve._actions}
    assert tuple(actions["speculative_method"].choices) == method_names()
    assert tuple(actions["verify_policy"].choices) == policy_names()


def test_config_rejects_unknown_names_and_missing_draft_models():
    with pytest.raises(ValueError, match="unknown speculative method"):
        SpeculativeConfig(method="telepathy")
    with pytest.raises(ValueError, match="unknown verification policy"):
        SpeculativeConfig(method="ngram", policy="psychic")
    with pytest.raises(ValueError, match="--draft-model"):
        SpeculativeConfig(method="dspark")


def test_architectures_registry():
    assert {"llama", "qwen2", "qwen3"} <= set(ARCHITECTURES)
    with pytest.raises(ValueError, match="not supported"):
        architecture("gpt2")


class ShortDrafter(StatelessDrafter):
    """Can draft at most 3 tokens per step (like a block head of size 3)."""

    name = "short"
    max_draft_tokens = 3

    def propose(self, inputs):
        assert all(item.max_tokens <= 3 for item in inputs)
        return {}


def test_k_beyond_a_drafters_block_is_clamped_with_a_log_line(tmp_path, caplog):
    config = EngineConfig(model=make_tiny_model_dir(tmp_path), scheduler=SchedulerConfig(max_model_len=128),
                          speculative=SpeculativeConfig(method="ngram", num_speculative_tokens=8,
                                                        policy="static"))
    with caplog.at_level(logging.WARNING, logger="specserve.engine"):
        engine = LLMEngine(config, step_cost=StepCostModel.flat(), drafter=ShortDrafter())
    assert engine.scheduler.drafting.max_tokens == 3
    assert "exceeds what short drafts per step; using 3" in caplog.text
    engine.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
