"""Verification policies by name: adding one is a new module that registers
itself plus one import line in scheduler/policies/__init__.py."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scheduler.policies.base import PolicyContext, VerifyPolicy

# "off" is not a policy: it switches speculation off altogether.
OFF = "off"


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy: how to build it and what it needs."""

    name: str
    build: Callable[[PolicyContext], VerifyPolicy]
    needs_step_cost: bool  # the engine profiles SPS(B) at start-up only if some policy needs it
    help: str


POLICIES: dict[str, PolicySpec] = {}


def register_policy(name: str, *, needs_step_cost: bool, help: str):
    """Decorator for a factory `(PolicyContext) -> VerifyPolicy`."""
    def register(build: Callable[[PolicyContext], VerifyPolicy]):
        if name in POLICIES or name == OFF:
            raise ValueError(f"verification policy {name!r} is already registered")
        POLICIES[name] = PolicySpec(name, build, needs_step_cost, help)
        return build
    return register


def policy_names() -> tuple[str, ...]:
    """Every accepted --verify-policy value, `off` first."""
    return (OFF, *sorted(POLICIES))


def policy_spec(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown verification policy {name!r}; choose from {policy_names()}") from None


def build_policy(name: str, context: PolicyContext) -> VerifyPolicy:
    spec = policy_spec(name)
    if spec.needs_step_cost and context.step_cost is None:
        raise ValueError(f"verification policy {name!r} needs a step-cost profile")
    return spec.build(context)
