"""engine/spec/training/scripts/plot_tau.py: held-out tau curves from the
trainer's log.jsonl, one panel per prompt set (needs matplotlib, in the
dev extra)."""
from __future__ import annotations

import json
import struct

import pytest

from engine.spec.training.scripts.plot_tau import main, read_evals, read_segments


def write_log(run_dir, taus: list[dict]) -> None:
    """A trainer log: training steps between evaluations at 100, 200, ... anchors."""
    run_dir.mkdir()
    lines = []
    for i, tau in enumerate(taus, 1):
        lines.append({"event": "step", "step": i, "loss": 3.0 / i})
        lines.append({"event": "eval", "step": i, "anchors": 100 * i, "tau": tau})
    (run_dir / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_only_evaluations_are_read_in_order(tmp_path):
    write_log(tmp_path / "dspark", [{"heldout": 1.5}, {"heldout": 1.9}])
    evals = read_evals(str(tmp_path / "dspark"))
    assert [(e["anchors"], e["tau"]["heldout"]) for e in evals] == [(100, 1.5), (200, 1.9)]


def test_a_checkpoint_without_a_log_is_read_from_its_report(tmp_path):
    history = [{"step": 250, "anchors": 100, "tau": {"heldout": 1.2}},
               {"step": 500, "anchors": 200, "tau": {"heldout": 1.3}}]
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "report.json").write_text(json.dumps({"history": history, "steps": 500}))
    assert read_evals(str(tmp_path / "head")) == history
    write_log(tmp_path / "run", [{"heldout": 1.5}])
    (tmp_path / "run" / "report.json").write_text(json.dumps({"history": history}))
    assert [e["tau"] for e in read_evals(str(tmp_path / "run"))] == [{"heldout": 1.5}]  # the log wins


def test_writes_one_panel_per_prompt_set(tmp_path):
    pytest.importorskip("matplotlib", reason="plot_tau needs matplotlib (the dev extra)")
    write_log(tmp_path / "eagle3", [{"heldout": 1.2, "mtbench": 1.1}, {"heldout": 1.4, "mtbench": 1.3}])
    write_log(tmp_path / "dspark", [{"heldout": 1.5}, {"heldout": 1.9, "humaneval": 2.0}])
    out = tmp_path / "tau.png"
    assert main([str(tmp_path / "eagle3"), str(tmp_path / "dspark"), "--out", str(out)]) == 0
    # Three sets (heldout, humaneval, mtbench): 5 x 4 inches each at 120 dpi.
    assert png_size(out) == (3 * 5 * 120, 4 * 120)


def test_the_stages_of_one_head_are_joined_in_order(tmp_path):
    """checkpoint+continued: one head's curve across a warm start, labelled
    by the first stage; stages given out of order are refused."""
    history = [{"step": 1, "anchors": 50, "tau": {"heldout": 1.2}}]
    (tmp_path / "dspark-smollm2").mkdir()
    (tmp_path / "dspark-smollm2" / "report.json").write_text(json.dumps({"history": history}))
    write_log(tmp_path / "continued", [{"heldout": 1.3}, {"heldout": 1.4}])
    first, then = str(tmp_path / "dspark-smollm2"), str(tmp_path / "continued")
    label, evals = read_segments(f"{first}+{then}")
    assert label == "dspark-smollm2" and [e["anchors"] for e in evals] == [50, 100, 200]
    assert [e["tau"]["heldout"] for e in evals] == [1.2, 1.3, 1.4]
    with pytest.raises(ValueError, match="do not follow on"):
        read_segments(f"{then}+{first}")
    label, named = read_segments(f"dspark={first}+{then}")
    assert label == "dspark" and named == evals
