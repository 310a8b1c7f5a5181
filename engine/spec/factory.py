"""Builds the drafter named by the speculative config, from the registry."""
from __future__ import annotations

import torch

from engine.config import EngineConfig
from engine.models.loader import LoadedModel
from engine.spec.base import Drafter
from engine.spec.registry import DrafterContext, drafter_spec


def build_drafter(config: EngineConfig, target: LoadedModel, num_blocks: int,
                  dtype: torch.dtype) -> Drafter | None:
    """None when speculation is off (method none, or --verify-policy off)."""
    spec = config.speculative
    if not spec.enabled:
        return None
    return drafter_spec(spec.method).build(DrafterContext(config, target, num_blocks, dtype))
