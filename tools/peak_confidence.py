"""Does the peak of a head's draft distribution predict survival better
than (or together with) its confidence head? An experiment, greedy (T=0).

speculation.md s.4 lets a confidence use the distribution x_k is drawn
from (its largest probability, say), never x_k itself. DSpark has a
confidence head; EAGLE-3 and DFlash report that peak. This tool records
both for the same verification steps and fits, per draft position, a
logistic map on each alone and on both together, on held-out records,
then scores them on checks that no fit saw.

    # held-out fit records: teacher-forced greedy walks, once with the
    # confidence head's outputs, once with the peaks (same blocks)
    python -m tools.peak_confidence fit --draft-model checkpoints/dspark-smollm2 \\
        --work-dir runs/calib-data --heldout-data sharegpt:160 --out runs/calib/dspark-fit-peaks.json
    # the checks' peaks: eval-draft's own run, with peaks in place of the
    # confidence head's outputs (pair it with the same eval-draft command
    # run plainly, which records the confidences)
    python -m tools.peak_confidence eval-draft --draft-model checkpoints/dspark-smollm2 --drafter head \\
        --data mtbench:80 --whole-eval-sets --max-new-tokens 96 --temperatures 0 --dtype float32 \\
        --records --report runs/calib/whole-peak/dspark-mtbench.json
    python -m tools.peak_confidence table --fit runs/calib/dspark-fit-peaks.json \\
        --confidence runs/calib/whole/dspark-{mtbench,humaneval}.json \\
        --peak runs/calib/whole-peak/dspark-{mtbench,humaneval}.json

The pairing is exact: under the static policy every draft is verified
and a confidence never changes what is drafted, so both runs verify the
same blocks (the table checks that their accepted counts agree).

Since then every block carries its peaks beside its confidences
(`DraftBlock.peaks`, the records' third column), the served calibration
can read them (`--calibration logistic-peak`), and
`engine.spec.training.scripts.calibration_methods table` scores that
method on one run's records; the paired runs here are for records taken
before.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from engine.spec.heads import drafting
from engine.spec.training.calibrate import (BlockRecord, confidence_logits, expected_calibration_error,
                                           MIN_LOGISTIC_EVENTS, fit_logistic_weights, reached_positions)
from engine.spec.training.scripts.calibration_methods import add_heldout_arguments, load_heldout, load_records

FEATURE_SETS = {"confidence": ("confidence",), "peak": ("peak",), "both": ("confidence", "peak")}


@contextlib.contextmanager
def peaks_as_confidences():
    """Every head reports the peak of its raw draft distribution as its
    confidence (DraftBatch.sample's own fallback when a head has no
    confidence head)."""
    sample = drafting.DraftBatch.sample
    drafting.DraftBatch.sample = lambda self, k, logits, confidence: sample(self, k, logits, None)
    try:
        yield
    finally:
        drafting.DraftBatch.sample = sample


def fit_positions(features: torch.Tensor, survived: torch.Tensor, reached: torch.Tensor,
                  min_events: int = MIN_LOGISTIC_EVENTS) -> list[torch.Tensor]:
    """Per position k: weights w (features, then a bias) of
    sigmoid(w . x + b) by log-loss over the blocks that reached k (the
    served calibration's fit, with any number of inputs, started at 0).
    features [F, N, K] (logits), survived / reached [N, K] bool."""
    return fit_logistic_weights(features, survived, reached, [0.0] * (features.shape[0] + 1), min_events)


def predict(features: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """[N, K] probabilities of the fitted maps."""
    ones = torch.ones(features.shape[1], 1, dtype=torch.float64)
    return torch.stack([torch.sigmoid(torch.cat([features[:, :, k].T.double(), ones], 1) @ w)
                        for k, w in enumerate(weights)], 1)


class PairedRecords:
    """The same verification steps, with confidences and with peaks."""

    def __init__(self, confidence: list[BlockRecord], peak: list[BlockRecord], block_size: int):
        if [r.num_accepted for r in confidence] != [r.num_accepted for r in peak]:
            raise ValueError("the two runs verified different blocks: not the same steps")
        self.logits = {}
        self.logits["confidence"], drafted, self.survived = confidence_logits(confidence, block_size)
        self.logits["peak"], _, _ = confidence_logits(peak, block_size)
        self.reached = reached_positions(drafted, self.survived)

    def features(self, names: tuple[str, ...]) -> torch.Tensor:
        return torch.stack([self.logits[name] for name in names])


def scores(predicted: torch.Tensor, survived: torch.Tensor, reached: torch.Tensor) -> tuple[float, float]:
    """Conditional ECE and conditional log-loss."""
    p, y = predicted[reached].clamp(1e-6, 1 - 1e-6), survived[reached].double()
    return (expected_calibration_error(predicted[reached], survived[reached]),
            float(-(y * p.log() + (1 - y) * (1 - p).log()).mean()))


def table(fit: PairedRecords, checks: dict[str, PairedRecords]) -> list[str]:
    names = list(checks)
    rows = ["| features | check: conditional ECE | check: conditional log-loss | "
            + " | ".join(f"{n}: ECE / log-loss" for n in names) + " |", "|---" * (3 + len(names)) + "|"]
    for label, feature_names in FEATURE_SETS.items():
        weights = fit_positions(fit.features(feature_names), fit.survived, fit.reached)
        predicted = {n: predict(c.features(feature_names), weights) for n, c in checks.items()}
        pooled = scores(torch.cat(list(predicted.values())), torch.cat([c.survived for c in checks.values()]),
                        torch.cat([c.reached for c in checks.values()]))
        per_set = [scores(predicted[n], checks[n].survived, checks[n].reached) for n in names]
        rows.append(f"| {label} | {pooled[0]:.3f} | {pooled[1]:.4f} | "
                    + " | ".join(f"{e:.3f} / {ll:.4f}" for e, ll in per_set) + " |")
    return rows


def _greedy_records(path: str) -> list[BlockRecord]:
    with open(path, encoding="utf-8") as f:
        entry = json.load(f)["results"]["temperature=0"]
    if "records" not in entry:
        raise SystemExit(f"{path} has no records: run eval-draft with --records")
    return load_records(entry["records"])


def fit_records(args) -> dict:
    from engine.spec.training.evaluate import teacher_forced_simulation

    _, head, data = load_heldout(args)
    confidence = teacher_forced_simulation(head, data.heldout)
    with peaks_as_confidences():
        peak = teacher_forced_simulation(head, data.heldout)
    return {name: [[r.confidences, r.num_accepted] for r in result.records]
            for name, result in (("confidence", confidence), ("peak", peak))}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval-draft"]:  # the CLI's eval-draft, peaks in place of confidences
        from engine.spec.training.cli import main as cli_main
        with peaks_as_confidences():
            return cli_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_heldout_arguments(sub.add_parser("fit", help="held-out greedy records with confidences and with peaks (JSON)"))
    compare = sub.add_parser("table", help="fit each feature set on --fit, score it on the checks")
    compare.add_argument("--fit", required=True)
    compare.add_argument("--confidence", nargs="+", required=True, help="eval-draft --records reports, HEAD-SET.json")
    compare.add_argument("--peak", nargs="+", required=True, help="the same runs through this tool's eval-draft")
    compare.add_argument("--block-size", type=int, default=7)
    args = parser.parse_args(argv)
    if args.command == "fit":
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(fit_records(args), f)
        return 0
    with open(args.fit, encoding="utf-8") as f:
        held_out = json.load(f)
    if len(args.confidence) != len(args.peak):
        parser.error("give one --peak report per --confidence report, in the same order")
    fitted = PairedRecords(load_records(held_out["confidence"]), load_records(held_out["peak"]), args.block_size)
    checks = {path.rsplit("/", 1)[-1].removesuffix(".json").rpartition("-")[2]:
              PairedRecords(_greedy_records(path), _greedy_records(peak), args.block_size)
              for path, peak in zip(args.confidence, args.peak)}
    print("\n".join(table(fitted, checks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
