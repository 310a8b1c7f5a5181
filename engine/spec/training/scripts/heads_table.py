"""Markdown tables from smollm2-heads-eval.sh's reports (RUN_DIR/eval/*.json).

    python -m engine.spec.training.scripts.heads_table runs/heads-smollm2/eval

Per drafter and temperature: tau on each prompt set and pooled (sum of
emitted tokens over sum of verification steps, as the server counts it);
for n-gram and the hybrid also tokens per decode step (steps where nothing
was drafted included); for heads the calibration after STS (ECE of the
conditional acceptance, AUROC; the blocks-weighted mean of the per-set
figures) over MT-Bench and HumanEval, which
STS was not fitted on.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict

SETS = ("mtbench", "humaneval", "sharegpt")
OUT_OF_FIT = ("mtbench", "humaneval")  # STS is fitted on the ShareGPT held-out split


def load_reports(folder: str) -> dict[tuple[str, str], dict]:
    """{(drafter label, set): report} from files named LABEL-SET.json."""
    reports = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        label, _, prompt_set = os.path.basename(path)[: -len(".json")].rpartition("-")
        with open(path, encoding="utf-8") as f:
            reports[label, prompt_set] = json.load(f)
    return reports


def pooled(entries: list[dict], emitted_key: str = "emitted", steps_key: str = "steps") -> float:
    steps = sum(e[steps_key] for e in entries)
    return sum(e[emitted_key] for e in entries) / steps if steps else float("nan")


def tau_rows(reports: dict) -> list[str]:
    labels = sorted({label for label, _ in reports}, key=lambda x: (x.startswith(("ngram", "hybrid")), x))
    rows = ["| drafter | T | " + " | ".join(SETS) + " | pooled | tokens/step pooled |",
            "|---|---|" + "---|" * (len(SETS) + 2)]
    for label in labels:
        for temperature in ("0", "1"):
            entries = {s: reports[label, s]["results"][f"temperature={temperature}"]
                       for s in SETS if (label, s) in reports}
            if not entries:
                continue
            cells = [f"{entries[s]['tau']:.3f}" if s in entries else "-" for s in SETS]
            per_step = [dict(e, decode_emitted=e["emitted"] + e.get("plain_steps", 0),
                             decode_steps=e["steps"] + e.get("plain_steps", 0)) for e in entries.values()]
            rows.append(f"| {label} | {temperature} | " + " | ".join(cells) +
                        f" | {pooled(list(entries.values())):.3f} | "
                        f"{pooled(per_step, 'decode_emitted', 'decode_steps'):.3f} |")
    return rows


def calibration_rows(reports: dict) -> list[str]:
    rows = ["| head | T | ECE conditional after STS | AUROC | ECE raw | blocks |", "|---|---|---|---|---|---|"]
    by_head = defaultdict(list)
    for (label, prompt_set), report in reports.items():
        if prompt_set in OUT_OF_FIT and report.get("drafter", "head") == "head":
            by_head[label].append(report)
    for label in sorted(by_head):
        for temperature in ("0", "1"):
            entries = [r["results"][f"temperature={temperature}"] for r in by_head[label]]
            calibrated = [e["calibrated"] for e in entries if "calibrated" in e]
            if not calibrated:
                continue
            blocks = sum(c["blocks"] for c in calibrated)
            ece = sum(c["ece_conditional"] * c["blocks"] for c in calibrated) / blocks
            auroc = sum(c["auroc_conditional"] * c["blocks"] for c in calibrated) / blocks
            raw = sum(e["ece_conditional"] * e["blocks"] for e in entries) / sum(e["blocks"] for e in entries)
            rows.append(f"| {label} | {temperature} | {ece:.3f} | {auroc:.3f} | {raw:.3f} | {blocks} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.spec.training.scripts.heads_table",
                                description=__doc__.splitlines()[0])
    p.add_argument("folder")
    args = p.parse_args(argv)
    reports = load_reports(args.folder)
    print("\n".join(tau_rows(reports)))
    print()
    print("\n".join(calibration_rows(reports)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
