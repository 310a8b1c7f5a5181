"""Shared fixtures for the draft-head tests: a tiny random target and its
teacher-forced hidden states."""
from __future__ import annotations

import pytest
import torch

from engine.kv_cache import allocate_kv_caches
from engine.models.loader import load_model
from kernels.attention import AttentionMetadata
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_target"), seed=5, num_layers=4)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    return load_model(tiny_dir)


def target_features(loaded, tokens: torch.Tensor, aux_layers) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced pass: (feats [T, A*H], final normed hidden [T, H])."""
    length, block = tokens.shape[0], 16
    blocks = list(range((length + block - 1) // block))
    caches = allocate_kv_caches(loaded.config, len(blocks), block, torch.float32, "cpu")
    meta = AttentionMetadata.build([length], [length], [blocks], block, "cpu")
    final, aux = loaded.model(tokens, torch.arange(length), caches, meta, aux_layers=tuple(aux_layers))
    return torch.cat(aux, dim=-1), final
