"""engine/spec/training/scripts/ablation_table.py: tau at one logged step,
the ratio to dspark, and the ablations' calibration."""
from __future__ import annotations

import json

from engine.spec.training.scripts.ablation_table import main, rows


def write_run(run, name: str, taus_by_step: dict[int, dict], check_sts: dict | None = None) -> None:
    folder = run / name
    folder.mkdir()
    lines = [json.dumps({"event": "checkpoint", "step": 1})]
    lines += [json.dumps({"event": "eval", "step": step, "tau": tau}) for step, tau in taus_by_step.items()]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    if check_sts is not None:
        (folder / "report.json").write_text(json.dumps({"T=0": {"check_sts": check_sts}}))


def tau(value: float) -> dict:
    return {"heldout": value, "mtbench": value, "humaneval": value}


def test_rows_compare_each_run_with_dspark_at_the_step(tmp_path, capsys):
    write_run(tmp_path, "dspark", {250: tau(1.2), 500: tau(1.5)})
    write_run(tmp_path, "dflash", {250: tau(1.1)})
    write_run(tmp_path, "ablation-markov-off", {250: tau(1.08)},
              {"ece_conditional": 0.031, "auroc_conditional": 0.7})
    write_run(tmp_path, "ablation-unfinished", {})  # not yet at the step: left out
    table = rows(str(tmp_path), 250)
    assert table[2] == "| dflash | 1.100 | 1.100 | 1.100 | 1.100 | 0.917x | - |"
    assert table[3] == "| dspark | 1.200 | 1.200 | 1.200 | 1.200 | 1.000x | - |"
    assert table[4] == "| ablation-markov-off | 1.080 | 1.080 | 1.080 | 1.080 | 0.900x | 3.1% / 0.700 |"
    assert len(table) == 5
    assert main([str(tmp_path), "--step", "500"]) == 0
    assert "| dspark | 1.500 |" in capsys.readouterr().out
