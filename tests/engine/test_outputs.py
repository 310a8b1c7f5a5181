"""engine/outputs.py: the engine's answers and errors."""
from __future__ import annotations

from engine.outputs import EngineStats, RequestFailedError


def test_mean_accepted_length_counts_the_bonus_token():
    assert EngineStats().mean_accepted_length == 0.0  # no verification yet
    assert EngineStats(num_drafts=4, num_accepted_tokens=6).mean_accepted_length == 2.5


def test_a_request_failure_names_the_request_and_stage():
    error = RequestFailedError("req-1", "absorb", ValueError("boom"))
    assert (error.request_id, error.stage) == ("req-1", "absorb")
    assert "req-1" in str(error) and "absorb" in str(error) and "boom" in str(error)
