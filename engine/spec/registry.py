"""Speculative methods by name: adding one is a new module that registers
its drafter plus one import line in engine/spec/builtin.py."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# "none" is not a drafter: it switches speculation off.
NONE = "none"


@dataclass(frozen=True)
class DrafterContext:
    """What a drafter may be built from."""

    config: Any  # engine.config.EngineConfig
    target: Any  # engine.models.loader.LoadedModel
    num_blocks: int  # the target's KV geometry, for drafters with their own paged KV
    dtype: Any  # torch.dtype of the target's weights


@dataclass(frozen=True)
class DrafterSpec:
    """A registered speculative method."""

    name: str
    build: Callable[[DrafterContext], Any]  # -> engine.spec.base.Drafter
    needs_draft_model: bool  # --draft-model PATH is required
    help: str


DRAFTERS: dict[str, DrafterSpec] = {}


def register_drafter(name: str, *, needs_draft_model: bool = False, help: str = ""):
    """Decorator for a factory `(DrafterContext) -> Drafter`."""
    def register(build: Callable[[DrafterContext], Any]):
        if name in DRAFTERS or name == NONE:
            raise ValueError(f"speculative method {name!r} is already registered")
        DRAFTERS[name] = DrafterSpec(name, build, needs_draft_model, help)
        return build
    return register


def method_names() -> tuple[str, ...]:
    """Every accepted --speculative-method value, `none` first."""
    import engine.spec.builtin  # noqa: F401  (registers the built-in drafters)

    return (NONE, *sorted(DRAFTERS))


def drafter_spec(name: str) -> DrafterSpec:
    import engine.spec.builtin  # noqa: F401  (registers the built-in drafters)

    try:
        return DRAFTERS[name]
    except KeyError:
        raise ValueError(f"unknown speculative method {name!r}; choose from {method_names()}") from None
