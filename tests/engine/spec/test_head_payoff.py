"""The hybrid's record of its head (engine/spec/head_payoff.py); the
decisions that read it are tested through the hybrid in test_hybrid.py."""
from __future__ import annotations

import pytest

from engine.spec.head_payoff import HeadLengths, HeadPayoff, PositionRates, head_expectation, ngram_expectation
from scheduler.drafts import DraftBlock, DraftEconomics


def test_position_rates_count_reached_positions_only():
    rates = PositionRates()
    rates.observe(num_verified=4, num_accepted=1)  # position 0 survived, 1 rejected, 2-3 not reached
    assert rates.trials == [1.0, 1.0] and rates.accepted == [1.0, 0.0]
    assert rates.rate(0) == pytest.approx((1 + 0.5 * 2) / 3) and rates.rate(5) == 0.5


def test_a_run_pays_for_the_share_of_a_step_its_drafts_save():
    payoff = HeadPayoff(runs=10.0, gained=5.0, verified=0.0, seconds=0.1, timed_runs=10.0)  # 0.5 drafts, 10 ms
    assert payoff.pays(DraftEconomics(accepted_token_seconds=0.03))  # 15 ms of worth
    assert not payoff.pays(DraftEconomics(accepted_token_seconds=0.03), steps_saved_per_token=0.5)


def test_expectations_and_lengths():
    assert ngram_expectation(None) == 0.0
    assert ngram_expectation(DraftBlock([1, 2], [0.5, 0.5], None, "ngram")) == pytest.approx(0.75)
    rates = PositionRates(trials=[10.0, 10.0], accepted=[10.0, 8.0])
    assert head_expectation(0.5, rates, 2) == pytest.approx(0.5 * (1 + rates.rate(1)))
    lengths = HeadLengths()
    assert lengths.cap(7) == 7
    lengths.observe(2)
    assert lengths.cap(7) == 3
