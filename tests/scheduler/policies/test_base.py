"""scheduler/policies/base.py: the VerifyPolicy contract is complete or
not instantiable, and the length histogram behind /metrics."""
from __future__ import annotations

import inspect

import pytest

from scheduler.policies.base import LengthHistogram, VerifyPolicy


def test_the_interface_names_every_method_the_scheduler_calls():
    abstract = set(VerifyPolicy.__abstractmethods__)
    assert abstract == {"choose_lengths", "observe", "observe_step", "should_draft", "draft_length",
                        "forget", "stats"}
    assert "load" in inspect.signature(VerifyPolicy.choose_lengths).parameters


def test_a_policy_missing_a_method_cannot_be_built():
    class Partial(VerifyPolicy):
        def choose_lengths(self, candidates, budget_left, num_emitting=0, load=None):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_lengths_beyond_the_histogram_land_in_its_last_bucket():
    histogram = LengthHistogram(3)
    histogram.record({"a": 0, "b": 2, "c": 9})
    assert histogram.counts == [1, 0, 1, 1]
