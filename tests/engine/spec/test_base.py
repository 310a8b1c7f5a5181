"""engine/spec/base.py: the Drafter interface is complete or not
instantiable, and its class attributes say what the engine must provide."""
from __future__ import annotations

import pytest

from engine.spec.base import Drafter


def test_a_drafter_missing_a_method_cannot_be_built():
    class Incomplete(Drafter):
        def propose(self, inputs):
            return {}

    with pytest.raises(TypeError, match="absorb"):
        Incomplete()


def test_defaults_describe_a_drafter_that_needs_nothing_extra():
    class Minimal(Drafter):
        def absorb(self, request, hidden):
            pass

        def propose(self, inputs):
            return {}

        def forget(self, request_ids):
            pass

    drafter = Minimal()
    assert (drafter.num_lookahead_slots, drafter.aux_layers, drafter.max_draft_tokens) == (0, (), None)
    assert drafter.costs_compute  # drafting is assumed to cost compute unless a drafter says otherwise
