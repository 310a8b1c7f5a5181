"""tools.engine_ab on a tiny target and head: every method of one run
side by side, ratios to speculation off, the drafters' own figures, and
the hybrid-without-head ablation (n-gram plus the hybrid's own costs)."""
from __future__ import annotations

import json

from engine.spec.heads.checkpoint import save_head
from tests.engine.spec.test_head_drafter import make_drafter
from tools import engine_ab


def test_engine_ab_runs_the_methods_interleaved_and_writes_their_figures(tmp_path, tiny_dir, tiny_target):
    save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / "ckpt"))
    methods = ["off", "ngram", "hybrid", "hybrid-nohead"]
    engine_ab.main(["chat", "1,2", "2", "--prompts", "3", "--max-tokens", "5", "--methods", ",".join(methods),
                    "--model", str(tiny_dir), "--draft-model", str(tmp_path / "ckpt"), "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["prompts"] == {"1": 3, "2": 4}  # at least 2 x C, whole batches of C
    for level in ("1", "2"):
        assert list(record["tok_s"][level]) == methods
        assert all(len(rounds) == 2 and min(rounds) > 0 for rounds in record["tok_s"][level].values())
        summary = record["summary"][level]
        assert summary["off"]["ratio_to_off"] == 1.0
        for name in methods:
            ratio = summary[name]["median_tok_s"] / summary["off"]["median_tok_s"]
            assert abs(summary[name]["ratio_to_off"] - ratio) < 0.01 * ratio
    stats = record["drafter_stats"]
    assert stats["off"] == {} and stats["ngram"] == {}
    assert stats["hybrid"]["chosen"]["dspark"] > 0  # the head ran and was chosen
    assert stats["hybrid-nohead"]["chosen"]["dspark"] == 0
