"""Reports: the comparison table's ratios, failures, sweep configs and table, plots."""
from bench.run import markdown_table
from bench.spec_sweep import ServerConfig, rotated, round_medians, rounds_table, side_by_side
from bench.plots import plot_throughput


def level(concurrency, agg, user, tau=None):
    dist = {"mean": 0.1, "p50": 0.1, "p90": 0.2, "p99": 0.3}
    return {"concurrency": concurrency, "aggregate_tokens_per_s": agg, "per_user_tokens_per_s": user,
            "ttft_s": dist, "tpot_s": dist, "itl_s": dist, "e2e_s": dist, "completed": 4, "sent": 4,
            "token_count_source": "usage",
            "spec_decode": None if tau is None else {"mean_accepted_length": tau}}


RESULTS = {
    "options": {"dataset": "chat", "num_prompts": 4, "seed": 0, "max_tokens": 8, "threads": 1,
                "verify_overhead": 0.0},
    "machine": {"date": "today", "host": "here"}, "model": "/m/x.gguf", "roofline": [],
    "systems": [
        {"name": "ours", "levels": [level(1, 20.0, 20.0, tau=1.5), level(8, 80.0, 10.0, tau=1.2)]},
        {"name": "peer", "levels": [level(1, 10.0, 10.0), level(8, 100.0, 12.5)]},
        {"name": "broken", "levels": [], "error": "ServerFailed: exited with code 1"},
    ],
}


def test_ratios_are_to_the_reference():
    table = markdown_table(RESULTS, "ours")
    assert "| peer | 10.0 | 0.50 | 10.0 | 0.50 |" in table
    assert "| peer | 100.0 | 1.25 | 12.5 | 1.25 |" in table
    assert "| ours | 20.0 | 1.00 |" in table and "| 1.50 |" in table
    assert "`broken`: ServerFailed" in table


def test_missing_reference_gives_no_ratio():
    assert "| peer | 10.0 | - | 10.0 | - |" in markdown_table(RESULTS, "absent")


def test_server_config_parsing():
    assert ServerConfig.parse("k4=--verify-policy static --num-speculative-tokens 4") == ServerConfig(
        "k4", ("--verify-policy", "static", "--num-speculative-tokens", "4"))
    assert ServerConfig.parse("--verify-policy=off").flags == ("--verify-policy=off",)


def test_sweep_table_side_by_side():
    records = [{"name": "a", "levels": [level(1, 10.0, 10.0), dict(level(2, 18.0, 9.0, tau=1.3),
                                                                    steady_aggregate_tokens_per_s=19.5)]},
               {"name": "b", "levels": [level(1, 12.0, 12.0)]}, {"name": "bad", "levels": [], "error": "x"}]
    table = side_by_side(records)
    assert table.splitlines()[0].count("tok/s") == 2  # failed configs have no column
    assert "| 2 | 9.0 / 18.0 / 19.5 (1.30) | - |" in table
    assert "| 1 | 10.0 / 10.0 / - | 12.0 / 12.0 / - |" in table  # no steady part (or an older run)


def test_sweep_table_says_which_source_a_hybrid_drafted_with():
    hybrid = level(1, 20.0, 20.0, tau=1.9)
    hybrid["spec_decode"]["by_source"] = {"ngram": {"drafts": 150.0}, "dspark": {"drafts": 11.0}}
    alone = level(1, 15.0, 15.0, tau=1.2)
    alone["spec_decode"]["by_source"] = {"dspark": {"drafts": 40.0}}
    table = side_by_side([{"name": "hybrid", "levels": [hybrid]}, {"name": "head", "levels": [alone]}])
    assert "| 1 | 20.0 / 20.0 / - (1.90; dspark 11, ngram 150) | 15.0 / 15.0 / - (1.20) |" in table


def test_rounds_rotate_so_each_config_runs_first_once():
    assert [rotated("abc", turn) for turn in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]


def _round(user, steady):
    return [dict(level(8, 0.0, user), steady_aggregate_tokens_per_s=steady)]


def test_round_ratios_are_medians_of_ratios_within_each_round():
    # Round 1 ran slow for everyone: its raw figures sink but its ratios hold.
    # Per-user ratios 1.3, 1.2, 1.0: their median (1.2) is not the ratio of
    # the medians (11 / 10).
    records = [{"name": "off", "rounds": [_round(10.0, 100.0), _round(5.0, 50.0), _round(11.0, 110.0)]},
               {"name": "spec", "rounds": [_round(13.0, 95.0), _round(6.0, 47.5), _round(11.0, 104.5)]},
               {"name": "bad", "rounds": [], "error": "x"}]
    medians = round_medians(records)
    assert set(medians) == {"off", "spec"}
    spec = medians["spec"]["8"]
    assert spec["per_user_tokens_per_s"]["median"] == 11.0
    assert abs(spec["per_user_tokens_per_s"]["ratio"] - 1.2) < 1e-9
    assert abs(spec["steady_aggregate_tokens_per_s"]["ratio"] - 0.95) < 1e-9
    assert medians["off"]["8"]["steady_aggregate_tokens_per_s"]["ratio"] == 1.0
    table = rounds_table(medians)
    assert "| 8 | 10.0 (1.000x) / 100.0 (1.000x) | 11.0 (1.200x) / 95.0 (0.950x) |" in table


def test_round_ratios_skip_rounds_without_the_figure():
    records = [{"name": "off", "rounds": [_round(10.0, None), _round(10.0, 100.0)]},
               {"name": "spec", "rounds": [_round(20.0, 80.0), _round(15.0, 90.0)]}]
    spec = round_medians(records)["spec"]["8"]
    assert spec["steady_aggregate_tokens_per_s"]["ratio"] == 0.9  # round 0's baseline has no steady part
    assert spec["per_user_tokens_per_s"]["ratio"] == 1.75


def test_plot_is_a_png(tmp_path):
    series = {s["name"]: s["levels"] for s in RESULTS["systems"] if s["levels"]}
    path = plot_throughput(series, tmp_path / "t.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
