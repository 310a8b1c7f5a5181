"""The confidences the scheduler reads, replayed over evaluation records.

A served head's confidence goes through two maps: the checkpoint's
stored calibration (fitted offline on held-out ShareGPT), then the
scheduler's online `ConfidenceCalibrator` (the adaptive policy's, and the
hybrid's per source), which re-maps each position's confidence bins to
the acceptance it has realised so far and scales each request by its own
luck. The tables of calibration_methods score the first map alone. This
replays both over `eval-draft --records` reports in the order the engine
verified them (their `record_origins`): every step's blocks are
calibrated first, then their outcomes observed, so each confidence uses
only outcomes of earlier steps (a prequential check, out of sample).

    python -m engine.spec.training.scripts.served_calibration \\
        --checkpoint checkpoints/dspark-smollm2 \\
        --check runs/calib-s13/whole/dspark-mtbench.json runs/calib-s13/whole/dspark-humaneval.json
    # (the records: bench/results/2026-12-02-served-calibration/run.sh)

Streams: each set alone (a server seeing only that traffic, the online
map starting from nothing), then the sets one after the other through one
calibrator, in the order given and reversed (traffic that changes
domain). Scored: conditional ECE (position k accepted given 1..k-1 were)
and its log-loss, per set, and the ECE outcomes drawn from the online
confidences themselves would show (the sampling floor).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from itertools import groupby

import torch

from engine.spec.heads.checkpoint import read_head_config
from engine.spec.heads.config import calibration_for
from engine.spec.training.calibrate import (BlockRecord, confidence_logits, expected_calibration_error, load_records,
                                           log_loss, peak_logits, sampling_floor, scaled_logits)
from scheduler.calibration import ConfidenceCalibrator


@dataclass
class CheckSet:
    """One evaluation set's records at one temperature, in verification order."""

    name: str
    records: list[BlockRecord]
    origins: list[tuple[int, int]]  # (request number, engine step) of each record


@dataclass
class Events:
    """Conditional events: the confidence each reached position was given, and its outcome."""

    predicted: list[float] = field(default_factory=list)
    survived: list[bool] = field(default_factory=list)

    def add(self, confidences: list[float], num_accepted: int) -> None:
        reached = min(len(confidences), num_accepted + 1)
        self.predicted += confidences[:reached]
        self.survived += [k < num_accepted for k in range(reached)]

    def scores(self) -> dict:
        p = torch.tensor(self.predicted, dtype=torch.float64)
        y = torch.tensor(self.survived, dtype=torch.float64)
        return {"ece_conditional": expected_calibration_error(p, y), "log_loss_conditional": log_loss(p, y),
                "events": len(self.predicted)}

    def sampling_floor(self, trials: int = 200, seed: int = 0) -> float:
        """What a perfect calibration shows on as many events (calibrate.sampling_floor)."""
        return sampling_floor(torch.tensor(self.predicted, dtype=torch.float64), trials, seed)


def load_check(path: str, temperature: str) -> CheckSet:
    """A set's records and origins from an eval-draft --records report (named HEAD-SET.json)."""
    with open(path, encoding="utf-8") as f:
        entry = json.load(f)["results"][f"temperature={temperature}"]
    if "record_origins" not in entry:
        raise SystemExit(f"{path} has no record_origins: run eval-draft --records again (they are recorded since "
                         "the served replay exists)")
    name = path.rsplit("/", 1)[-1].removesuffix(".json").rpartition("-")[2]
    return CheckSet(name, load_records(entry["records"]), [tuple(o) for o in entry["record_origins"]])


def stored_confidences(records: list[BlockRecord], calibration: list | None, block_size: int) -> list[list[float]]:
    """Each record's conditional confidences after the stored (offline) map,
    as HeadDrafter hands them to the scheduler."""
    logits, _, _ = confidence_logits(records, block_size)
    mapped = torch.sigmoid(scaled_logits(logits, calibration, peak_logits(records, block_size)))
    return [mapped[i, :min(len(r.confidences), block_size)].tolist() for i, r in enumerate(records)]


def replay(sets: list[CheckSet], calibration: list | None, block_size: int,
           calibrator: ConfidenceCalibrator) -> dict[str, tuple[Events, Events]]:
    """Per set, (stored map alone, stored map then `calibrator` online) events,
    the sets streamed through the one calibrator in the order given."""
    out = {}
    for check in sets:
        stored = stored_confidences(check.records, calibration, block_size)
        offline, online = Events(), Events()
        order = sorted(range(len(check.records)), key=lambda i: check.origins[i][1])
        for _, step in groupby(order, key=lambda i: check.origins[i][1]):
            step = list(step)
            # The scheduler calibrates a step's blocks before any of its outcomes is known.
            given = {i: calibrator.calibrate(_request_id(check, i), stored[i]) for i in step}
            for i in step:
                record = check.records[i]
                calibrator.observe(_request_id(check, i), stored[i], given[i], record.num_accepted)
                offline.add(stored[i], record.num_accepted)
                online.add(given[i], record.num_accepted)
        out[check.name] = (offline, online)
    return out


def _request_id(check: CheckSet, index: int) -> str:
    return f"{check.name}/{check.origins[index][0]}"


def check_rows(sets: list[CheckSet], calibration: list | None, block_size: int) -> list[str]:
    """Markdown rows for one temperature: each stream, its sets' ECE (log-loss)."""
    streams = [(f"{s.name} alone", [s]) for s in sets]
    if len(sets) > 1:
        streams += [(" then ".join(s.name for s in order), order) for order in (sets, sets[::-1])]
    rows = ["| stream | set | events | stored map: ECE (log-loss) | stored map + online: ECE (log-loss) "
            "| sampling floor |", "|---|---|---|---|---|---|"]
    for label, order in streams:
        for name, (offline, online) in replay(order, calibration, block_size,
                                              ConfidenceCalibrator(max_positions=block_size)).items():
            a, b = offline.scores(), online.scores()
            rows.append(f"| {label} | {name} | {a['events']} | {a['ece_conditional']:.3f} "
                        f"({a['log_loss_conditional']:.4f}) | {b['ece_conditional']:.3f} "
                        f"({b['log_loss_conditional']:.4f}) | {online.sampling_floor():.3f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the head whose stored calibration is served")
    parser.add_argument("--check", nargs="+", required=True,
                        help="eval-draft --records reports of that head's raw confidences, HEAD-SET.json")
    parser.add_argument("--temperatures", nargs="+", default=["0", "1"])
    parser.add_argument("--block-size", type=int, default=7)
    args = parser.parse_args(argv)
    config = read_head_config(args.checkpoint)
    for temperature in args.temperatures:
        sets = [load_check(path, temperature) for path in args.check]
        print(f"\nT={temperature}: {args.checkpoint}'s stored calibration, then the scheduler's online one\n")
        print("\n".join(check_rows(sets, calibration_for(config.calibration, float(temperature)), args.block_size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
