"""tools.head_cost on a tiny target and head: the three configurations side
by side, a draft's cost against a plain decode step, and the report files."""
from __future__ import annotations

import json

from tools import head_cost
from engine.spec.heads.checkpoint import save_head
from tests.engine.spec.test_head_drafter import make_drafter


def test_head_cost_reports_the_served_and_plain_head_against_decoding(tmp_path, tiny_dir, tiny_target, capsys):
    save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / "ckpt"))
    status = head_cost.main(["--draft-model", str(tmp_path / "ckpt"), "--model", str(tiny_dir),
                             "--new-tokens", "6", "--repeats", "1", "--out", str(tmp_path / "out")])
    assert status == 0
    report = json.loads((tmp_path / "out" / "head_cost.json").read_text())
    results = report["results"]
    assert list(results) == ["served (packed)", "plain modules", "speculation off"]
    for name in ("served (packed)", "plain modules"):
        assert results[name]["propose_ms"] > 0 and results[name]["tau"] >= 1
        assert results[name]["propose_over_decode_step"] == round(
            results[name]["propose_ms"] / results["speculation off"]["step_ms"], 3)
    assert results["speculation off"]["propose_ms"] is None and results["speculation off"]["tau"] is None
    assert all(r["steps"] > 0 and r["step_ms"] > 0 for r in results.values())
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("\n") == 5 and "| served (packed) |" in table and table in capsys.readouterr().out + "\n"


def test_head_cost_drafts_as_many_as_it_is_told(tmp_path, tiny_dir, tiny_target):
    save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / "ckpt"))
    head_cost.main(["--draft-model", str(tmp_path / "ckpt"), "--model", str(tiny_dir), "--new-tokens", "6",
                    "--repeats", "1", "--drafts", "2", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "head_cost.json").read_text())
    assert report["drafts"] == 2 and 1 <= report["results"]["served (packed)"]["tau"] <= 3
