"""Markdown table of DSpark's ablations against the three heads at one step.

    python -m engine.spec.training.scripts.ablation_table runs/heads-smollm2 --step 250

Reads the held-out greedy tau each run logged at `--step` (RUN_DIR/NAME/
log.jsonl, the teacher-forced evaluation the trainer runs every
--eval-every steps) for eagle3, dflash, dspark and every ablation-NAME
(smollm2-heads.sh ablate), all on the same data, seed and learning-rate
schedule, so a row differs from dspark's in the one part its name says.
For ablations, stopped at that step, the calibration after STS from their
report.json (T=0, the half STS was not fitted on) is added.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

HEADS = ("eagle3", "dflash", "dspark")
SETS = ("heldout", "mtbench", "humaneval")


def tau_at(run_dir: str, step: int) -> dict[str, float] | None:
    """The tau per set logged at `step`, or None if the run did not log it."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if entry.get("event") == "eval" and entry["step"] == step:
                return entry["tau"]
    return None


def calibration(run_dir: str) -> tuple[float, float] | None:
    """(conditional ECE, AUROC) after STS at T=0, out of fit, if reported."""
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        check = json.load(f).get("T=0", {}).get("check_sts")
    return (check["ece_conditional"], check["auroc_conditional"]) if check else None


def rows(run: str, step: int) -> list[str]:
    names = [*HEADS, *sorted(os.path.basename(p) for p in glob.glob(os.path.join(run, "ablation-*")))]
    taus = {name: tau_at(os.path.join(run, name), step) for name in names}
    reference = taus.get("dspark")
    out = [f"| run (step {step}) | " + " | ".join(SETS) + " | mean | vs dspark | ECE / AUROC (T=0, after STS) |",
           "|---|" + "---|" * (len(SETS) + 3)]
    for name in names:
        tau = taus[name]
        if tau is None:
            continue
        mean = sum(tau[s] for s in SETS) / len(SETS)
        ratio = f"{mean / (sum(reference[s] for s in SETS) / len(SETS)):.3f}x" if reference else "-"
        fit = calibration(os.path.join(run, name)) if name.startswith("ablation-") else None
        fit_text = f"{100 * fit[0]:.1f}% / {fit[1]:.3f}" if fit else "-"
        out.append(f"| {name} | " + " | ".join(f"{tau[s]:.3f}" for s in SETS)
                   + f" | {mean:.3f} | {ratio} | {fit_text} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run directory (smollm2-heads.sh's RUN_DIR)")
    parser.add_argument("--step", type=int, default=250, help="the logged evaluation step to compare at")
    args = parser.parse_args(argv)
    print("\n".join(rows(args.run, args.step)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
