"""engine/spec/factory.py: the speculative config names the drafter."""
from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig, SpeculativeConfig
from engine.models.loader import load_model
from engine.spec.factory import build_drafter
from engine.spec.ngram import NgramDrafter
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_model(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def config(target, **speculative):
    return EngineConfig(model=target.path, speculative=SpeculativeConfig(**speculative))


def test_the_named_method_is_built_with_its_settings(target):
    drafter = build_drafter(config(target, method="ngram", ngram_min=2, ngram_max=3), target, 16, torch.float32)
    assert isinstance(drafter, NgramDrafter) and (drafter.min_n, drafter.max_n) == (2, 3)


def test_no_drafter_when_speculation_is_off(target):
    assert build_drafter(config(target), target, 16, torch.float32) is None
    assert build_drafter(config(target, method="ngram", policy="off"), target, 16, torch.float32) is None
