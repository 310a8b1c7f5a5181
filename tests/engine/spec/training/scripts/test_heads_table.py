"""engine/spec/training/scripts/heads_table.py: pooled tau and the
calibration table from eval-draft reports named LABEL-SET.json."""
from __future__ import annotations

import json
import math

import pytest

from engine.spec.training.scripts.heads_table import load_reports, main, pooled, tau_rows


def entry(emitted: int, steps: int, plain_steps: int = 0, calibrated=None) -> dict:
    """One temperature's results as eval-draft writes them (SpecResult.summary)."""
    result = {"tau": emitted / steps, "steps": steps, "emitted": emitted, "plain_steps": plain_steps,
              "ece_conditional": 0.2, "auroc_conditional": 0.6, "blocks": steps}
    if calibrated is not None:
        result["calibrated"] = calibrated
    return result


def write(folder, name: str, drafter: str, at_0: dict, at_1: dict) -> None:
    """A report of smollm2-heads-eval.sh (eval-draft --temperatures 0 1)."""
    report = {"drafter": drafter, "results": {"temperature=0": at_0, "temperature=1": at_1}}
    (folder / f"{name}.json").write_text(json.dumps(report))


def calibrated(ece: float, auroc: float, blocks: int) -> dict:
    return {"ece_conditional": ece, "auroc_conditional": auroc, "blocks": blocks}


@pytest.fixture
def reports(tmp_path):
    write(tmp_path, "dspark-b7-mtbench", "head", entry(300, 100, calibrated=calibrated(0.05, 0.8, 30)),
          entry(200, 100))
    write(tmp_path, "dspark-b7-humaneval", "head", entry(500, 100, calibrated=calibrated(0.01, 0.9, 10)),
          entry(400, 100))
    write(tmp_path, "ngram-mtbench", "ngram", entry(150, 100, plain_steps=50), entry(120, 100, plain_steps=50))
    return tmp_path


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_reports_are_keyed_by_label_and_set(reports):
    loaded = load_reports(str(reports))
    assert set(loaded) == {("dspark-b7", "mtbench"), ("dspark-b7", "humaneval"), ("ngram", "mtbench")}


def test_pooled_tau_is_emitted_over_steps_summed_over_sets(reports):
    rows = [cells(row) for row in tau_rows(load_reports(str(reports)))[2:]]
    assert [row[:2] for row in rows] == [["dspark-b7", "0"], ["dspark-b7", "1"], ["ngram", "0"], ["ngram", "1"]]
    # Per set, then pooled: (300 + 500) / (100 + 100), not a mean of the sets' tau.
    assert rows[0][2:6] == ["3.000", "5.000", "-", "4.000"] and rows[1][5] == "3.000"
    # Tokens per decode step count the steps where n-gram drafted nothing: (150 + 50) / (100 + 50).
    assert rows[2][5:] == ["1.500", "1.333"] and rows[3][5:] == ["1.200", "1.133"]
    assert math.isnan(pooled([]))


def test_calibration_is_the_blocks_weighted_mean_over_sets_sts_was_not_fitted_on(reports, capsys):
    assert main([str(reports)]) == 0
    lines = capsys.readouterr().out.splitlines()
    calibration = [cells(row) for row in lines[lines.index("") + 1:]]
    # (0.05 * 30 + 0.01 * 10) / 40; the raw ECE weighted by each set's blocks.
    assert calibration[2] == ["dspark-b7", "0", "0.040", "0.825", "0.200", "40"]
    assert len(calibration) == 3  # no calibrated T=1 figures and no n-gram row
