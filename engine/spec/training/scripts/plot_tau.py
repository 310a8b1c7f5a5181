"""Held-out greedy tau against training tokens, one line per head and set,
from the `log.jsonl` files the trainer writes, or a committed checkpoint's
report.json (needs matplotlib).

  python -m engine.spec.training.scripts.plot_tau runs/heads-smollm2/{eagle3,dflash,dspark} \\
      --out docs/draft-heads-tau.png
  python -m engine.spec.training.scripts.plot_tau checkpoints/{eagle3,dflash,dspark}-smollm2 --out ...
  # a head trained on from a checkpoint (train-draft --init-from): its
  # segments joined with "+", in order, one line labelled by the first
  python -m engine.spec.training.scripts.plot_tau \
      checkpoints/dspark-smollm2+runs/heads-smollm2/dspark-continued --out ...
  # LABEL=...: the line's label instead of the first segment's folder name
  python -m engine.spec.training.scripts.plot_tau dspark=bench/results/A+bench/results/B --out ...
"""
from __future__ import annotations

import argparse
import json
import os


def read_evals(run_dir: str) -> list[dict]:
    """The evaluation entries of one run's log.jsonl, in order; for a
    committed checkpoint (no log), its report.json's history, which holds
    the same entries."""
    log = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(log):
        with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as f:
            return json.load(f)["history"]
    with open(log, encoding="utf-8") as f:
        return [entry for entry in map(json.loads, f) if entry.get("event") == "eval"]


def read_segments(spec: str) -> tuple[str, list[dict]]:
    """A head's label and evaluations from "DIR" or "DIR+DIR+...": the
    segments of one head trained on in stages, joined in the order given
    (a warm start's log counts on from its checkpoint's anchors); "LABEL=..."
    names the line, else the first folder does."""
    label, _, joined = spec.rpartition("=")
    dirs = joined.split("+")
    evals = [entry for run_dir in dirs for entry in read_evals(run_dir)]
    anchors = [entry["anchors"] for entry in evals]
    if anchors != sorted(anchors):
        raise ValueError(f"{spec}: the segments' anchors do not follow on from each other")
    return label or os.path.basename(os.path.normpath(dirs[0])), evals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="training output directories (each with log.jsonl, or a "
                   "checkpoint's report.json); DIR+DIR joins the stages of one head, LABEL=DIR+DIR names it")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = dict(read_segments(run) for run in args.runs)
    sets = sorted({name for entries in evals.values() for e in entries for name in e["tau"]})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], sets):
        for head, entries in evals.items():
            points = [(e["anchors"], e["tau"][name]) for e in entries if name in e["tau"]]
            ax.plot([a for a, _ in points], [t for _, t in points], marker="o", markersize=3, label=head)
        ax.set_title(f"{name}: greedy tau, block 7")
        ax.set_xlabel("training tokens (anchors)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("tau (teacher-forced)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
