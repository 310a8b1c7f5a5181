"""Prometheus exposition: names, types, values, per-app registries."""
from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.outputs import SourceCounts
from server.app import create_app
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server

HISTOGRAMS = ["time_to_first_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds", "request_prompt_tokens",
              "request_generation_tokens"]
COUNTERS = ["prompt_tokens", "generation_tokens", "request_success",
            "spec_decode_num_drafts", "spec_decode_num_draft_tokens",
            "spec_decode_num_accepted_tokens", "spec_decode_num_accepted_tokens_per_pos",
            "prefix_cache_queries", "prefix_cache_hits"]
GAUGES = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
          "spec_decode_mean_accepted_length"]


def _scrape(http) -> dict:
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(family, suffix="", **labels) -> float:
    matches = [s.value for s in family.samples
               if s.name == family.name + suffix and all(s.labels.get(k) == v
                                                         for k, v in labels.items())]
    assert len(matches) == 1, (family.name, suffix, labels, family.samples)
    return matches[0]


def test_all_metrics_exposed_with_types(http):
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 3})
    families = _scrape(http)
    for name in HISTOGRAMS:
        assert families[f"specserve:{name}"].type == "histogram", name
    for name in COUNTERS:
        assert families[f"specserve:{name}"].type == "counter", name
    for name in GAUGES:
        assert families[f"specserve:{name}"].type == "gauge", name


def _totals(http) -> dict:
    """The request-level figures this test compares, from one scrape."""
    f = _scrape(http)
    success = f["specserve:request_success"]
    return {
        "ttft": _value(f["specserve:time_to_first_token_seconds"], "_count"),
        "e2e": _value(f["specserve:e2e_request_latency_seconds"], "_count"),
        "gen_hist": _value(f["specserve:request_generation_tokens"], "_count"),
        "gen_sum": _value(f["specserve:request_generation_tokens"], "_sum"),
        "itl": _value(f["specserve:inter_token_latency_seconds"], "_count"),
        "success": sum(s.value for s in success.samples if s.name.endswith("_total")),
        "generated": _value(f["specserve:generation_tokens"], "_total"),
        "prompt": _value(f["specserve:prompt_tokens"], "_total"),
    }


def test_request_metrics_count_what_was_served(http):
    before = _totals(http)
    prompt = completion = 0
    for max_tokens, n in ((4, 1), (6, 2)):
        body = {"messages": [{"role": "user", "content": "count me"}],
                "max_tokens": max_tokens, "n": n}
        u = http.post("/v1/chat/completions", json=body).json()["usage"]
        prompt += u["prompt_tokens"] * n  # counted per engine request
        completion += u["completion_tokens"]
    stream = {"prompt": "abc", "max_tokens": 5, "stream": True,
              "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=stream) as r:
        last_usage = [line for line in r.iter_lines() if '"usage": {' in line][-1]
    u = json.loads(last_usage[len("data: "):])["usage"]
    prompt += u["prompt_tokens"]
    completion += u["completion_tokens"]
    after = _totals(http)
    delta = {k: after[k] - before[k] for k in after}
    requests = 1 + 2 + 1
    assert delta["ttft"] == delta["e2e"] == delta["gen_hist"] == delta["success"] == requests
    assert delta["generated"] == delta["gen_sum"] == completion
    assert delta["prompt"] == prompt
    assert delta["itl"] == completion - requests  # one sample per token after the first


def test_engine_gauges_read_at_scrape_time():
    engine = FakeEngineClient()
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        engine.running.update({"a", "b"})
        engine._stats.num_waiting = 5
        families = _scrape(http)
        assert _value(families["specserve:num_requests_running"]) == 2
        assert _value(families["specserve:num_requests_waiting"]) == 5
        assert _value(families["specserve:kv_cache_usage_perc"]) == 0.25
        engine.running.clear()
        assert _value(_scrape(http)["specserve:num_requests_running"]) == 0


def test_speculative_counters():
    engine = FakeEngineClient(spec_tokens=3)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        http.post("/v1/completions", json={"prompt": "speculate", "max_tokens": 9})
        families = _scrape(http)
    stats = engine.stats()
    assert stats.num_drafts > 0
    assert _value(families["specserve:spec_decode_num_drafts"], "_total") == stats.num_drafts
    assert (_value(families["specserve:spec_decode_num_draft_tokens"], "_total")
            == stats.num_draft_tokens)
    assert (_value(families["specserve:spec_decode_num_accepted_tokens"], "_total")
            == stats.num_accepted_tokens)
    per_pos = families["specserve:spec_decode_num_accepted_tokens_per_pos"]
    assert {s.labels["position"] for s in per_pos.samples} == {"0", "1", "2"}
    assert (_value(families["specserve:spec_decode_mean_accepted_length"])
            == stats.mean_accepted_length)


def test_speculative_counters_per_draft_source_and_drafter_events():
    """Labelled by the drafter that proposed each block, and the drafter's
    own counters, as Prometheus counters a real parser reads back."""
    engine = FakeEngineClient(spec_tokens=3)
    engine._stats.spec_by_source = {"ngram": SourceCounts(5, 15, 9), "dspark": SourceCounts(2, 14, 3)}
    engine._stats.drafter_events = {"head_skipped_cost": 7, "head_explored": 1}
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        families = _scrape(http)
    for metric, expected in (("drafts", {"ngram": 5, "dspark": 2}), ("draft_tokens", {"ngram": 15, "dspark": 14}),
                             ("accepted_tokens", {"ngram": 9, "dspark": 3})):
        family = families[f"specserve:spec_decode_num_{metric}_by_source"]
        assert family.type == "counter"
        for source, value in expected.items():
            assert _value(family, "_total", source=source) == value
    events = families["specserve:spec_drafter_events"]
    assert _value(events, "_total", event="head_skipped_cost") == 7
    assert _value(events, "_total", event="head_explored") == 1


def test_token_tree_counters():
    engine = FakeEngineClient(spec_tokens=3)
    figures = {"alternatives": 11, "alternative_draft_tokens": 40, "alternative_wins": 4,
               "alternative_accepted_tokens": 9, "alternatives_dropped": 2}
    for name, value in figures.items():
        setattr(engine._stats, f"num_{name}", value)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        families = _scrape(http)
    for name, value in figures.items():
        family = families[f"specserve:spec_tree_{name}"]
        assert family.type == "counter" and _value(family, "_total") == value


def test_scrape_survives_failing_stats():
    class Flaky(FakeEngineClient):
        def stats(self):
            raise RuntimeError("engine gone")

    with live_server(Flaky()) as srv, httpx.Client(base_url=srv.url) as http:
        families = _scrape(http)
    assert "specserve:time_to_first_token_seconds" in families
    assert "specserve:num_requests_running" not in families


def test_apps_have_separate_registries():
    a = create_app(FakeEngineClient())
    b = create_app(FakeEngineClient())  # would raise "Duplicated timeseries" if shared
    assert a.state.metrics.registry is not b.state.metrics.registry
    a.state.metrics.generation_tokens.inc(7)
    text_b = b.state.metrics.exposition().decode()
    assert "specserve:generation_tokens_total 0.0" in text_b


def test_verification_policy_metrics_from_the_real_engine(http, engine_client):
    """The adaptive policy's chosen lengths, calibration and SPS table."""
    code = "def f(x):\n    return x + 1\n" * 6
    for _ in range(3):
        http.post("/v1/completions", json={"prompt": code, "max_tokens": 24, "temperature": 0,
                                           "ignore_eos": True})
    families = _scrape(http)
    stats = engine_client.stats()
    lengths = families["specserve:spec_verify_length"]
    assert lengths.type == "counter"
    chosen = {int(s.labels["length"]): s.value for s in lengths.samples if s.name.endswith("_total")}
    assert sum(chosen.values()) == sum(stats.policy.verify_length_counts) > 0
    assert _value(families["specserve:spec_calibration_observations"], "_total") == stats.policy.calibration_observations
    assert 0 <= _value(families["specserve:spec_calibration_error"]) <= 1
    assert (_value(families["specserve:spec_calibration_realised_acceptance"])
            == stats.policy.calibration_realised)
    sps = families["specserve:step_cost_steps_per_second"]
    assert [int(s.labels["batch_tokens"]) for s in sps.samples] == [b for b, _ in stats.policy.step_cost_table]
    assert all(s.value > 0 for s in sps.samples)
