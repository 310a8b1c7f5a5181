"""Against a REAL specserve server (tiny random model, subprocess on 127.0.0.1).

One comparison run (n-gram drafting, adaptive verification) through the same
entry point as `python -m bench`, then checks of what it wrote; and a sweep
configuration with a flag the server does not know must fail loudly; a
sweep in rounds runs each configuration once per round, in rotating order.
"""
import json
from types import SimpleNamespace

import pytest

from bench import run, spec_sweep
from tests.tiny_model import make_tiny_model_dir

SUMMARY_KEYS = {"sent", "completed", "failed", "aborted", "duration_s", "output_tokens", "token_count_source",
                "request_throughput", "aggregate_tokens_per_s", "steady_window_s",
                "steady_aggregate_tokens_per_s", "per_user_tokens_per_s",
                "ttft_s", "itl_s", "tpot_s", "e2e_s", "errors"}
REQUEST_KEYS = {"ok", "start", "ttft", "itl", "e2e", "tpot", "output_tokens", "prompt_tokens",
                "token_count_source", "finish_reason", "error", "aborted"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture(scope="module")
def comparison(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    options = run.Options(systems=("specserve-spec",), concurrency=(1, 3), dataset="code-copy", num_prompts=8,
                          max_tokens=12, requests_per_level=4, max_seconds=20.0, drain_seconds=10.0,
                          warmup_requests=1, threads=1, model=model_dir, out_dir=str(out),
                          skip_bandwidth=True, reference="specserve-spec")
    run.run_comparison(options, log=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    raw = json.loads((out / "raw" / "requests.json").read_text())
    for system in results["systems"]:  # put the per-request records back for the checks
        for level, raw_level in zip(system["levels"], raw[system["name"]]):
            level["requests"] = raw_level["requests"]
    return out, results


def test_every_request_of_every_level_completed(comparison):
    _, results = comparison
    [system] = results["systems"]
    assert "error" not in system, system.get("error")
    assert [lv["concurrency"] for lv in system["levels"]] == [1, 3]
    for level in system["levels"]:
        assert SUMMARY_KEYS <= set(level)
        assert level["sent"] == level["completed"] + level["failed"] == len(level["requests"])
        assert level["failed"] == 0, level["errors"]
        assert level["sent"] >= 2 * level["concurrency"]
        # ignore_eos holds every answer to max_tokens; usage says so.
        assert level["output_tokens"] == 12 * level["completed"]
        assert level["token_count_source"] == "usage"
        assert level["aggregate_tokens_per_s"] > 0 and level["ttft_s"]["p50"] > 0
        assert 0 < level["steady_window_s"] < level["duration_s"] and level["steady_aggregate_tokens_per_s"] > 0
        for request in level["requests"]:
            assert set(request) == REQUEST_KEYS
            assert request["ttft"] <= request["e2e"]


def test_spec_decode_counters_come_from_metrics(comparison):
    _, results = comparison
    for level in results["systems"][0]["levels"]:
        spec = level["spec_decode"]
        assert spec is not None and {"drafts", "accepted_tokens", "mean_accepted_length"} <= set(spec)
        if spec["drafts"]:
            assert spec["mean_accepted_length"] == pytest.approx(1 + spec["accepted_tokens"] / spec["drafts"])


def test_outputs_written(comparison):
    out, results = comparison
    table = (out / "table.md").read_text()
    assert "## Concurrency 1" in table and "| specserve-spec |" in table
    for name in ("throughput.png", "latency.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "raw" / "logs" / "specserve-spec.log").is_file()
    assert "requests" not in json.loads((out / "results.json").read_text())["systems"][0]["levels"][0]


def test_roofline_rows_from_measured_levels(comparison, model_dir):
    _, results = comparison
    systems = [run.default_systems(run.DEFAULT_SPEC_FLAGS, "float32")["specserve-spec"]]
    bandwidth = {"1": {"read_gbps": 10.0, "copy_gbps": 10.0}}
    rows = run.roofline_rows(systems, results["systems"], model_dir, bandwidth, run.Options(threads=1))
    assert [r["concurrency"] for r in rows] == [1, 3]
    assert all(0 < r["fraction_of_bound"] for r in rows)


def test_sweep_fails_loudly_on_an_unknown_server_flag(model_dir, tmp_path):
    lines = []
    args = SimpleNamespace(config=["bogus=--no-such-flag 3"], concurrency="1", dataset="chat", num_prompts=2,
                           seed=0, max_tokens=4, requests_per_level=1, max_seconds=5.0, drain_seconds=5.0,
                           model=model_dir, threads=1, out_dir=str(tmp_path), keep_going=False,
                           rounds=1)
    status = spec_sweep.run_from_args(args, log=lines.append)
    assert status == 2
    text = "\n".join(lines)
    assert "exited with code" in text and "--no-such-flag" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["configs"][0]["error"]


def test_sweep_in_rounds_rotates_the_configs_and_writes_ratios(model_dir, tmp_path):
    lines = []
    args = SimpleNamespace(config=["off=--verify-policy off", "ngram=--speculative-method ngram"], concurrency="1",
                           dataset="chat", num_prompts=2, seed=0, max_tokens=4, requests_per_level=2,
                           max_seconds=20.0, drain_seconds=10.0, model=model_dir, threads=1, out_dir=str(tmp_path),
                           keep_going=False, rounds=2)
    assert spec_sweep.run_from_args(args, log=lines.append) == 0
    started = [line.split("]")[0][1:] for line in lines if "] ready:" in line]
    assert started == ["off", "ngram", "ngram", "off"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [len(c["rounds"]) for c in saved["configs"]] == [2, 2]
    assert saved["configs"][0]["levels"] == saved["configs"][0]["rounds"][0]
    ngram = saved["round_medians"]["ngram"]["1"]["per_user_tokens_per_s"]
    assert ngram["ratio"] > 0 and len(ngram["per_round"]) == 2
    assert "ngram user tok/s (ratio)" in (tmp_path / "rounds.md").read_text()
