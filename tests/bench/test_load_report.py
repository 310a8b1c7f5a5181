"""The Poisson sweep's bookkeeping: run order, SLO, pooled repeats, targets."""
from __future__ import annotations

import pytest

from bench.load_report import Slo, aggregate, level_summary, markdown_table, targets, write_report
from bench.load_sweep import level_config, schedule
from bench.loadgen import LoadConfig
from bench.spec_sweep import ServerConfig


def request(ttft=0.5, tpot=0.05, tokens=10, ok=True, itl=(0.05, 0.05)):
    e2e = ttft + tpot * (tokens - 1)
    return {"ok": ok, "ttft": ttft if ok else None, "tpot": tpot if ok else None, "e2e": e2e if ok else None,
            "output_tokens": tokens if ok else 0, "itl": list(itl) if ok else []}


def record(name, rate, requests, repeat=0, duration=10.0, budget=None, tau=None):
    return {"name": name, "rate": rate, "repeat": repeat, "requests": requests,
            "summary": {"duration_s": duration}, "budget": budget or {},
            "spec_decode": {"drafts": 10, "accepted_tokens": 10 * (tau - 1), "mean_accepted_length": tau}
            if tau else None}


def test_slo_needs_both_ttft_and_tpot_and_success():
    slo = Slo(ttft_s=2.0, tpot_s=0.2)
    assert slo.met_by(request(ttft=1.9, tpot=0.19))
    assert not slo.met_by(request(ttft=2.1)) and not slo.met_by(request(tpot=0.3))
    assert not slo.met_by(request(ok=False))


def test_level_summary_figures():
    r = record("adaptive", 0.5, [request(ttft=t) for t in (0.1, 0.2, 3.0)] + [request(ok=False)],
               budget={"prefill": 60, "decode": 30, "draft": 10}, tau=2.0)
    s = level_summary(r, Slo())
    assert (s["sent"], s["completed"]) == (4, 3)
    assert s["goodput_fraction"] == pytest.approx(0.5) and s["goodput_per_s"] == pytest.approx(0.2)
    assert s["tokens_per_s"] == pytest.approx(3.0) and s["draft_share"] == pytest.approx(0.1)
    assert s["ttft_p50"] == pytest.approx(0.2) and s["tau"] == 2.0


def test_repeats_are_pooled_and_their_spread_kept():
    records = [record("off", 1.0, [request(ttft=0.5)] * 4, repeat=0, duration=10),
               record("off", 1.0, [request(ttft=1.5)] * 4, repeat=1, duration=30)]
    f = aggregate(records, Slo())[("off", 1.0)]
    assert f["repeats"] == 2 and f["ttft_p99_each"] == [pytest.approx(0.5), pytest.approx(1.5)]
    assert f["tokens_per_s"] == pytest.approx(80 / 40)
    assert f["tokens_per_s_each"] == [pytest.approx(4.0), pytest.approx(40 / 30)]


def test_targets_compare_adaptive_with_off_and_the_best_static():
    records = [record("off", 0.1, [request(ttft=1.0)] * 3), record("adaptive", 0.1, [request(ttft=1.04)] * 3),
               record("static-k4", 0.1, [request(tpot=0.04)] * 3), record("static-k2", 0.1, [request()] * 3),
               record("off", 1.0, [request(ttft=1.0)] * 3), record("adaptive", 1.0, [request(ttft=1.2)] * 3)]
    text = targets(aggregate(records, Slo()))
    line_light, line_heavy = text.splitlines()[2:4]
    assert "1.04 (met)" in line_light and "vs static-k4 (missed)" in line_light
    assert "1.20 (missed)" in line_heavy and "+0 (met)" in line_heavy


def test_report_files_are_written(tmp_path):
    records = [record("off", r, [request()] * 2) for r in (0.1, 1.0)]
    records += [record("adaptive", r, [request()] * 2, tau=1.5) for r in (0.1, 1.0)]
    write_report(tmp_path, records, Slo(), {"dataset": "chat", "max_tokens": 8})
    assert (tmp_path / "load.png").stat().st_size > 0
    assert "| 0.1 | adaptive |" in (tmp_path / "table.md").read_text()
    assert markdown_table(aggregate(records, Slo())).count("\n") == 5


def test_schedule_interleaves_configs_within_a_rate_and_keeps_statics_light():
    configs = [ServerConfig.parse(c) for c in ("off=--x", "adaptive=--y", "static-k4=--z")]
    runs = [(rep, rate, c.name) for rep, rate, c in schedule(configs, [0.1, 1.0], 2, {"static-k4"}, 0.1)]
    assert runs == [(0, 0.1, "off"), (0, 0.1, "adaptive"), (0, 0.1, "static-k4"),
                    (0, 1.0, "adaptive"), (0, 1.0, "off"),
                    (1, 0.1, "static-k4"), (1, 0.1, "adaptive"), (1, 0.1, "off"),
                    (1, 1.0, "off"), (1, 1.0, "adaptive")]


def test_level_config_sizes_levels_by_rate():
    base = LoadConfig()
    assert level_config(base, 0.5, 40, 12).num_requests == 20
    assert level_config(base, 0.1, 40, 12).num_requests == 12
