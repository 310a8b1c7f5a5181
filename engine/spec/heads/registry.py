"""The one list of draft-head families: method name -> the class serving it.

Adding a family is its module plus one line in HEAD_FAMILIES. Classes are
named by import path and imported on first use, so this module (and
engine/config.py, which validates --speculative-method against
HEAD_METHODS) does not import torch.
"""
from __future__ import annotations

import importlib

HEAD_FAMILIES: dict[str, str] = {
    "eagle3": "engine.spec.heads.eagle3:Eagle3Head",
    "dflash": "engine.spec.heads.dflash:DFlashHead",
    "dspark": "engine.spec.heads.dspark:DSparkHead",
}
HEAD_METHODS: tuple[str, ...] = tuple(HEAD_FAMILIES)


def head_class(method: str) -> type:
    """The DraftHead subclass registered for `method`."""
    if method not in HEAD_FAMILIES:
        raise ValueError(f"unknown draft head method {method!r}; choose from {tuple(HEAD_FAMILIES)}")
    module, name = HEAD_FAMILIES[method].split(":")
    return getattr(importlib.import_module(module), name)
