"""calibration_methods: each method fitted on held-out records, scored on check sets."""
from __future__ import annotations

import json

import pytest
import torch

from engine.spec.training.calibrate import BlockRecord
from engine.spec.training.scripts.calibration_methods import (fit_method, main, sampling_floor, scores)

BLOCK = 3


def biased_records(n: int, seed: int) -> list[BlockRecord]:
    """Confidences 0.3..0.7, each truly accepted 0.15 less often."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        raw = torch.rand(BLOCK, generator=gen) * 0.4 + 0.3
        accepted = 0
        while accepted < BLOCK and torch.rand(1, generator=gen) < raw[accepted] - 0.15:
            accepted += 1
        out.append(BlockRecord(raw.tolist(), accepted))
    return out


def test_methods_that_can_shift_calibrate_a_biased_head_out_of_sample():
    fit, check = biased_records(3000, 0), biased_records(3000, 1)
    errors = {m: scores(check, BLOCK, fit_method(m, fit, BLOCK))["ece_conditional"]
              for m in ("raw", "sts", "sts-shift", "logistic")}
    assert max(errors["sts-shift"], errors["logistic"]) < 0.03 < 0.08 < min(errors["raw"], errors["sts"]), errors


def test_the_sampling_floor_is_what_calibrated_outcomes_show():
    """Outcomes drawn from the confidences themselves: the measured ECE is
    near the floor, and the floor shrinks with more events."""
    gen = torch.Generator().manual_seed(2)

    def calibrated(n):
        out = []
        for _ in range(n):
            c = (torch.rand(BLOCK, generator=gen) * 0.8 + 0.1).tolist()
            accepted = 0
            while accepted < BLOCK and float(torch.rand(1, generator=gen)) < c[accepted]:
                accepted += 1
            out.append(BlockRecord(c, accepted))
        return out

    small, large = calibrated(200), calibrated(5000)
    assert sampling_floor(large, BLOCK, None) < sampling_floor(small, BLOCK, None)
    assert scores(large, BLOCK, None)["ece_conditional"] < 3 * sampling_floor(large, BLOCK, None)


def test_table_from_files(tmp_path, capsys, tiny_target):
    as_rows = lambda records: [[r.confidences, r.num_accepted] for r in records]  # noqa: E731
    (tmp_path / "fit.json").write_text(json.dumps({"0": as_rows(biased_records(800, 3))}))
    for name, seed in (("mtbench", 4), ("humaneval", 5)):
        report = {"results": {"temperature=0": {"records": as_rows(biased_records(300, seed))}}}
        (tmp_path / f"head-{name}.json").write_text(json.dumps(report))
    checks = [str(tmp_path / "head-mtbench.json"), str(tmp_path / "head-humaneval.json")]
    fit = ["table", "--fit", str(tmp_path / "fit.json"), "--block-size", str(BLOCK)]
    assert main([*fit, "--methods", "raw,sts,sts-shift,logistic", "--check", *checks]) == 0
    out = capsys.readouterr().out
    assert "mtbench: conditional ECE" in out and "humaneval: conditional ECE" in out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][1:] == \
        ["raw", "sts", "sts-shift", "logistic"]
    with pytest.raises(ValueError, match="records with peaks"):  # all methods: these records have none
        main([*fit, "--check", *checks])
    # A checkpoint's stored calibration is scored as one more row.
    from engine.spec.heads.checkpoint import save_head
    from engine.spec.training.calibrate import fit_logistic
    from tests.engine.spec.conftest import make_head

    head = make_head("dspark", tiny_target, BLOCK)
    head.config.calibration = {"0": fit_logistic(biased_records(800, 3), BLOCK)}
    save_head(head, str(tmp_path / "head"))
    assert main([*fit, "--methods", "logistic", "--check", checks[0], "--checkpoint", str(tmp_path / "head")]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[3] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert rows[f"stored: {tmp_path / 'head'}"] == rows["logistic"]
    # Without fit records: the stored row alone, with the same check figures.
    assert main(["table", "--block-size", str(BLOCK), "--check", checks[0], "--checkpoint", str(tmp_path / "head")]) == 0
    alone = {line.split("|")[1].strip(): line.split("|") for line in capsys.readouterr().out.splitlines()
             if line.startswith("| ")}
    assert list(alone)[1:] == [f"stored: {tmp_path / 'head'}"]
    assert alone[f"stored: {tmp_path / 'head'}"][2].strip() == "-"
    assert alone[f"stored: {tmp_path / 'head'}"][3] == rows["logistic"]
    with pytest.raises(ValueError, match="nothing to score"):
        main(["table", "--check", checks[0]])
    (tmp_path / "bare.json").write_text(json.dumps({"results": {"temperature=0": {"steps": 1}}}))
    with pytest.raises(SystemExit, match="--records"):
        main(["table", "--fit", str(tmp_path / "fit.json"), "--check", str(tmp_path / "bare.json")])


def test_logistic_peak_is_a_row_where_the_records_have_peaks(tmp_path, capsys):
    """Records taken since heads report peaks fit logistic-peak too; where
    survival follows the peak it scores a lower log-loss than logistic."""
    from engine.spec.training.calibrate import record_row
    from tests.engine.spec.training.test_calibrate import peaked_records

    (tmp_path / "fit.json").write_text(json.dumps({"0": [record_row(r) for r in peaked_records(3000, 0)]}))
    report = {"results": {"temperature=0": {"records": [record_row(r) for r in peaked_records(2000, 1)]}}}
    (tmp_path / "head-sharegpt.json").write_text(json.dumps(report))
    assert main(["table", "--fit", str(tmp_path / "fit.json"), "--block-size", "3", "--check",
                 str(tmp_path / "head-sharegpt.json")]) == 0
    rows = {line.split("|")[1].strip(): line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert list(rows)[1:] == ["raw", "sts", "sts-shift", "logistic", "logistic-peak"]
    log_loss = {method: float(rows[method][4]) for method in ("logistic", "logistic-peak")}
    assert log_loss["logistic-peak"] < log_loss["logistic"] - 0.05, log_loss
