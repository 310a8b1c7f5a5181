"""Model architectures by HF `model_type`: adding one is a new module that
calls `register_architecture` plus one import line in engine/models/__init__.py.

An architecture names the module class that runs it and adapts the HF
config.json to the family's ModelConfig fields (what the generic reader in
loader.py cannot know, e.g. Qwen2's implicit q/k/v biases).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """A registered model family."""

    model_type: str
    model_class: Callable[[Any], Any]  # ModelConfig -> torch module
    adapt_config: Callable[[dict], dict]  # HF config.json -> ModelConfig field overrides


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(model_type: str, model_class, adapt_config: Callable[[dict], dict]) -> None:
    if model_type in ARCHITECTURES:
        raise ValueError(f"architecture {model_type!r} is already registered")
    ARCHITECTURES[model_type] = Architecture(model_type, model_class, adapt_config)


def architecture(model_type: str) -> Architecture:
    import engine.models  # noqa: F401  (registers the built-in architectures)

    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: "
                         f"{tuple(ARCHITECTURES)}") from None
