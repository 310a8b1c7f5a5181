"""engine/isolation.py: an error fails only the request it belongs to; a
batched stage that fails for everyone, alone too, stalls the engine."""
from __future__ import annotations

import pytest

from engine.isolation import FailureIsolation
from engine.outputs import EngineStalledError, RequestFailedError


def summed(items):
    if "bad" in items:
        raise RuntimeError("bad input")
    return sum(len(i) for i in items)


def test_attempt_fails_only_the_request_that_raised():
    dropped = []
    isolation = FailureIsolation(dropped.append)
    assert isolation.attempt("a", "stop", lambda x: x * 2, 3) == (True, 6)
    assert isolation.attempt("b", "stop", lambda: 1 / 0) == (False, None)
    assert dropped == ["b"] and isolation.has_failed("b") and not isolation.has_failed("a")
    [failure] = isolation.take_failures()
    assert isinstance(failure.as_error(), RequestFailedError) and failure.stage == "stop"
    assert isolation.take_failures() == []


def test_a_failed_batch_is_rerun_one_by_one_and_merged():
    dropped = []
    isolation = FailureIsolation(dropped.append)
    result = isolation.batched("forward", ["ab", "bad", "c"], lambda i: i, summed, sum)
    assert result == 3 and dropped == ["bad"]


def test_barren_batches_in_a_row_stall_the_engine():
    isolation = FailureIsolation(lambda _: None, max_barren_steps=2)
    assert isolation.batched("forward", ["bad"], lambda i: i, summed, sum) == 0
    with pytest.raises(EngineStalledError):
        isolation.batched("forward", ["bad"], lambda i: i, summed, sum)


def test_a_good_batch_resets_the_barren_count():
    isolation = FailureIsolation(lambda _: None, max_barren_steps=2)
    isolation.batched("forward", ["bad"], lambda i: i, summed, sum)
    assert isolation.batched("forward", ["ok"], lambda i: i, summed, sum) == 2
    assert isolation.batched("forward", ["bad"], lambda i: i, summed, sum) == 0  # not yet stalled
