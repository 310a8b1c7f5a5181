"""Percentiles and level summaries."""
import numpy as np
import pytest

from bench.stats import RequestResult, distribution, percentile, summarize, tokens_before


def test_percentile_hand_values():
    assert percentile([5.0], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([10, 20], 90) == pytest.approx(19.0)
    assert percentile([], 50) is None


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101):
        values = list(rng.exponential(size=n))
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_keys():
    assert set(distribution([1.0, 2.0])) == {"mean", "p50", "p90", "p99"}
    assert distribution([])["p50"] is None


def test_tpot_excludes_first_token():
    r = RequestResult(ok=True, ttft=0.5, e2e=1.5, output_tokens=11)
    assert r.tpot == pytest.approx(0.1)
    assert RequestResult(ok=True, ttft=0.5, e2e=0.5, output_tokens=1).tpot is None


def test_summary_counts_and_rates():
    results = [
        RequestResult(ok=True, ttft=0.1, itl=[0.05, 0.05], e2e=1.0, output_tokens=10, token_count_source="usage"),
        RequestResult(ok=True, ttft=0.3, itl=[0.1], e2e=2.0, output_tokens=30, token_count_source="chunks"),
        RequestResult(ok=False, error="HTTP 500: boom"),
        RequestResult(ok=False, error="aborted", aborted=True),
    ]
    s = summarize(results, duration=4.0)
    assert (s["sent"], s["completed"], s["failed"], s["aborted"]) == (4, 2, 2, 1)
    assert s["sent"] == s["completed"] + s["failed"]
    assert s["output_tokens"] == 40
    assert s["aggregate_tokens_per_s"] == pytest.approx(10.0)
    assert s["per_user_tokens_per_s"] == pytest.approx((10 / 1.0 + 30 / 2.0) / 2)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["ttft_s"]["p50"] == pytest.approx(0.2)
    assert s["itl_s"]["mean"] == pytest.approx(0.2 / 3)
    assert s["token_count_source"] == "chunks,usage"
    assert s["errors"] == {"HTTP 500: boom": 1, "aborted": 1}


def test_summary_of_nothing():
    s = summarize([], duration=0.0)
    assert s["sent"] == 0 and s["aggregate_tokens_per_s"] is None and s["ttft_s"]["p99"] is None


def test_steady_aggregate_counts_the_tokens_received_before_the_last_send():
    """Tokens spread evenly from a request's first token to its end; those
    after `until` (the drain) do not count, nor do failed requests'."""
    results = [
        RequestResult(ok=True, start=0.0, ttft=1.0, e2e=3.0, output_tokens=21),  # 11 by t=2
        RequestResult(ok=True, start=0.5, ttft=0.5, e2e=1.0, output_tokens=5),  # done at 1.5
        RequestResult(ok=True, start=1.5, ttft=0.6, e2e=2.0, output_tokens=9),  # first token at 2.1
        RequestResult(ok=False, start=0.0, error="HTTP 500"),
    ]
    assert tokens_before(results[0], 2.0) == pytest.approx(11.0)
    s = summarize(results, duration=4.0, steady_until=2.0)
    assert s["steady_window_s"] == 2.0
    assert s["steady_aggregate_tokens_per_s"] == pytest.approx((11 + 5 + 0) / 2.0)
    assert s["aggregate_tokens_per_s"] == pytest.approx(35 / 4.0)
    assert summarize(results, duration=4.0)["steady_aggregate_tokens_per_s"] is None
