"""engine/spec/registry.py: speculative methods by name, registered once."""
from __future__ import annotations

import pytest

from engine.spec import registry
from engine.spec.registry import NONE, DrafterContext, drafter_spec, method_names, register_drafter


def test_none_comes_first_and_the_builtins_follow_sorted():
    names = method_names()
    assert names[0] == NONE and list(names[1:]) == sorted(names[1:])
    assert drafter_spec("ngram").needs_draft_model is False


def test_a_new_method_registers_once(monkeypatch):
    method_names()  # the built-ins register first
    monkeypatch.setattr(registry, "DRAFTERS", dict(registry.DRAFTERS))

    @register_drafter("toy", needs_draft_model=True, help="a toy")
    def build(context: DrafterContext):
        return "built"

    spec = drafter_spec("toy")
    assert (spec.needs_draft_model, spec.help, spec.build(None)) == (True, "a toy", "built")
    assert "toy" in method_names()
    for taken in ("toy", NONE):
        with pytest.raises(ValueError, match="already registered"):
            register_drafter(taken)(build)


def test_an_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown speculative method 'telepathy'.*ngram"):
        drafter_spec("telepathy")
