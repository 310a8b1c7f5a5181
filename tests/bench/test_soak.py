"""`specserve soak` against an in-process server with the fake engine: it
counts requests, disconnects and errors, samples RSS and the engine's
gauges, and fails the run when a criterion does not hold."""
from __future__ import annotations

import asyncio
import json
import os

import pytest

from bench import soak
from cli import main as cli_main
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server

SHORT = soak.SoakConfig(streams=4, minutes=0.05, disconnect_fraction=0.3, max_tokens=12,
                        warmup_minutes=0.01, sample_seconds=0.5, idle_timeout_s=5)


def _run(engine: FakeEngineClient, config: soak.SoakConfig = SHORT) -> dict:
    with live_server(engine) as srv:
        return asyncio.run(soak.soak(srv.url, os.getpid(), config))


def test_a_healthy_server_passes():
    report = _run(FakeEngineClient(step_delay=0.001))
    tally = report["tally"]
    assert report["passed"], report["checks"]
    assert tally["requests"] == tally["completed"] + tally["disconnected"] > 10
    assert tally["disconnected"] > 0 and tally["completion_tokens"] > 0
    assert report["idle_at_end"] == {"num_requests_running": 0, "num_requests_waiting": 0,
                                     "kv_cache_usage_perc": 0}
    assert report["rss_after_warmup_bytes"]["first"] > 0
    assert len(report["series"]) >= 3 and "rss_bytes" in report["series"][0]
    assert "| passed | True" in soak.markdown(report)


def test_errors_fail_the_run():
    report = _run(FakeEngineClient(queue_full=True), soak.SoakConfig(
        streams=2, minutes=0.01, sample_seconds=0.2, idle_timeout_s=1))
    assert report["tally"]["http_errors"] > 0 and not report["checks"]["no_http_errors"]
    assert not report["passed"] and "429" in report["tally"]["examples"][0]


def test_a_dying_engine_is_counted_as_stream_errors():
    report = _run(FakeEngineClient(fail_after=3), soak.SoakConfig(
        streams=2, minutes=0.01, disconnect_fraction=0, sample_seconds=0.2, idle_timeout_s=1))
    tally = report["tally"]
    assert tally["stream_errors"] + tally["http_errors"] > 0 and not report["passed"]


def test_rss_growth_is_judged_after_warm_up():
    series = [{"t_s": 0, "rss_bytes": 50}, {"t_s": 60, "rss_bytes": 100},
              {"t_s": 120, "rss_bytes": 104}, {"t_s": 180, "rss_bytes": 110}]
    idle = {"num_requests_running": 0, "num_requests_waiting": 0, "kv_cache_usage_perc": 0}
    config = soak.SoakConfig(warmup_minutes=1, max_rss_growth=0.05)
    report = soak.build_report(config, soak.Tally(), series, idle, 1.0)
    assert report["rss_growth_after_warmup"] == pytest.approx(0.10)
    assert not report["checks"]["rss_growth_ok"]
    report = soak.build_report(config, soak.Tally(), series[:3], idle, 1.0)
    assert report["checks"]["rss_growth_ok"] and report["passed"]


def test_the_command_writes_its_report(tmp_path, capsys):
    with live_server(FakeEngineClient()) as srv:
        code = cli_main.main(["soak", "--url", srv.url, "--pid", str(os.getpid()),
                              "--streams", "2", "--minutes", "0.02", "--sample-seconds", "0.3",
                              "--warmup-minutes", "0", "--max-tokens", "8",
                              "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["command"].startswith("specserve soak")
    assert (tmp_path / "report.md").read_text() in capsys.readouterr().out
