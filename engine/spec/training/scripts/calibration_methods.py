"""Which calibration calibrates a head out of sample: fit each method on the
held-out records, score it on evaluation sets STS never saw.

    # 1. the records calibration is fitted on (what calibrate-draft fits on,
    #    all held-out sequences at once): T=0 teacher-forced walks over the
    #    held-out greedy responses, T=1 real decoding of the held-out prompts
    python -m engine.spec.training.scripts.calibration_methods records \\
        --draft-model checkpoints/dspark-smollm2 --work-dir runs/calib-data \\
        --heldout-data sharegpt:160 --dtype float32 --out runs/calib/dspark-fit.json
    # 2. eval-draft --records on the evaluation sets, then the table
    python -m engine.spec.training.scripts.calibration_methods table \\
        --fit runs/calib/dspark-fit.json --check runs/calib/dspark-mtbench.json runs/calib/dspark-humaneval.json

Methods: raw confidences; `sts`, temperatures alone (speculation.md s.3);
`sts-shift`, a temperature and a logit shift per position on the same
criterion (ECE of the survival products), which can flatten a position
to its base rate; `logistic`, a scale and a shift per position fitted by
log-loss on the conditional acceptance (the default of train-draft and
calibrate-draft); `logistic-peak`, the same reading the peak of the draft
distribution too (records taken since heads report peaks). Scored: ECE of the conditional acceptance (position k
accepted given 1..k-1 were) and its log-loss (lower for confidences that
also tell drafts apart), ECE of the survival products, pooled over the
check sets, the conditional ECE per set, and the ECE a perfectly
calibrated predictor would show on as many events (the sampling floor:
the median over 200 simulated outcome sets).
"""
from __future__ import annotations

import argparse
import json

import torch

from engine.spec.heads.checkpoint import read_head_config
from engine.spec.heads.config import calibration_for
from engine.spec.training.calibrate import (DEFAULT_SHIFTS, BlockRecord, confidence_logits, expected_calibration_error,
                                           fit_calibration, fit_sts, load_records, log_loss, peak_logits,
                                           reached_positions, record_row, scaled_logits)
from engine.spec.training.calibrate import sampling_floor as events_sampling_floor

METHODS = ("raw", "sts", "sts-shift", "logistic", "logistic-peak")


def fit_method(method: str, records: list[BlockRecord], block_size: int) -> list | None:
    if method == "raw":
        return None
    if method == "sts-shift":
        return fit_sts(records, block_size, shifts=DEFAULT_SHIFTS)
    return fit_calibration(method, records, block_size)  # what train-draft and calibrate-draft fit


def scores(records: list[BlockRecord], block_size: int, calibration: list | None) -> dict:
    logits, drafted, survived = confidence_logits(records, block_size)
    reached = reached_positions(drafted, survived)
    conditional = torch.sigmoid(scaled_logits(logits, calibration, peak_logits(records, block_size)))
    survival = conditional.cumprod(dim=1)
    return {"ece_conditional": expected_calibration_error(conditional[reached], survived[reached]),
            "log_loss_conditional": log_loss(conditional[reached], survived[reached]),
            "ece_survival": expected_calibration_error(survival[drafted], survived[drafted]),
            "events": int(reached.sum())}


def sampling_floor(records: list[BlockRecord], block_size: int, calibration: list | None,
                   trials: int = 200, seed: int = 0) -> float:
    """Median conditional ECE of outcomes drawn from the calibrated
    confidences themselves: what even a perfect calibration shows here."""
    logits, drafted, survived = confidence_logits(records, block_size)
    peaks = peak_logits(records, block_size)
    predicted = torch.sigmoid(scaled_logits(logits, calibration, peaks))[reached_positions(drafted, survived)]
    return events_sampling_floor(predicted, trials, seed)


def check_records(paths: list[str], key: str) -> dict[str, list[BlockRecord]]:
    """{set name: records} from eval-draft --records reports (files named HEAD-SET.json)."""
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        entry = report["results"][f"temperature={key}"]
        if "records" not in entry:
            raise SystemExit(f"{path} has no records: run eval-draft with --records")
        out[path.rsplit("/", 1)[-1].removesuffix(".json").rpartition("-")[2]] = load_records(entry["records"])
    return out


def table(fit: dict | None, checks: list[str], block_size: int = 7, methods=METHODS,
          stored: dict[str, dict] | None = None) -> list[str]:
    """Markdown rows: per temperature and method, the fit set's and the
    check sets' (pooled, then each) ECEs; then the sampling floor. `stored`:
    {label: HeadConfig.calibration} of checkpoints, scored as rows too.
    Without `fit` (None) only the stored rows are scored, at the check
    files' temperatures: a checkpoint's calibration checked out of fit
    without walking its held-out set again."""
    if fit is None and not stored:
        raise ValueError("nothing to score: no fit records and no stored calibration")
    rows = []
    for key in sorted(fit) if fit is not None else check_temperatures(checks):
        fit_records = load_records(fit[key]) if fit is not None else None
        sets = check_records(checks, key)
        pooled = [r for records in sets.values() for r in records]
        names = list(sets)
        fitted_on = f"fitted on {len(fit_records)} held-out blocks" if fit_records is not None else "stored calibrations"
        rows += [f"\nT={key}: {fitted_on}, checked on {len(pooled)} ({', '.join(names)})\n",
                 "| method | fit: conditional / survival ECE | check: conditional ECE | check: conditional log-loss "
                 "| check: survival ECE | "
                 + " | ".join(f"{n}: conditional ECE" for n in names) + " |",
                 "|---" * (5 + len(names)) + "|"]
        fitted = [(method, fit_method(method, fit_records, block_size)) for method in methods] \
            if fit_records is not None else []
        fitted += [(label, calibration_for(calibration, float(key))) for label, calibration in (stored or {}).items()]
        for method, calibration in fitted:
            on_check = scores(pooled, block_size, calibration)
            per_set = [scores(sets[n], block_size, calibration)["ece_conditional"] for n in names]
            rows.append(f"| {method} | {_fit_cell(fit_records, block_size, calibration)} "
                        f"| {on_check['ece_conditional']:.3f} | {on_check['log_loss_conditional']:.4f} "
                        f"| {on_check['ece_survival']:.3f} | "
                        + " | ".join(f"{e:.3f}" for e in per_set) + " |")
        floor_calibration = fit_method("logistic", fit_records, block_size) if fit_records is not None \
            else fitted[0][1]
        floor = sampling_floor(pooled, block_size, floor_calibration)
        rows.append(f"\nSampling floor of the pooled check's conditional ECE ({scores(pooled, block_size, None)['events']}"
                    f" events, {'logistic' if fit_records is not None else fitted[0][0]} confidences): {floor:.3f}")
    return rows


def _fit_cell(fit_records, block_size: int, calibration) -> str:
    if fit_records is None:
        return "-"
    on_fit = scores(fit_records, block_size, calibration)
    return f"{on_fit['ece_conditional']:.3f} / {on_fit['ece_survival']:.3f}"


def check_temperatures(paths: list[str]) -> list[str]:
    """The temperatures (as record keys) every check file has records for."""
    keys = None
    for path in paths:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)["results"]
        found = {k.removeprefix("temperature=") for k, v in results.items() if "records" in v}
        keys = found if keys is None else keys & found
    return sorted(keys or ())


def add_heldout_arguments(p: argparse.ArgumentParser) -> None:
    """A head and the held-out set its fit records come from."""
    p.add_argument("--draft-model", required=True)
    p.add_argument("--target", default=None)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--heldout-data", required=True)
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)


def load_heldout(args):
    """(target, head, held-out data) for add_heldout_arguments' args; the
    held-out responses are the target's greedy ones (cached in --work-dir)."""
    from engine.spec.heads.checkpoint import load_head
    from engine.spec.training import cli

    torch.set_num_threads(max(1, args.threads))
    loaded = cli._load_target(args.target, cli._resolve(args.dtype, "cpu"))
    head = load_head(args.draft_model, loaded.model, next(loaded.model.parameters()).dtype)
    data = cli.heldout_data(argparse.Namespace(**vars(args), gen_temperature=0.0, gen_threads=1, no_progress=True),
                            loaded, head.config.aux_layers)
    return loaded, head, data


def fit_records(args) -> dict:
    """What calibrate_per_temperature fits on, for all held-out sequences at once."""
    from engine.spec.training.data import chat_prompt_ids
    from engine.spec.training.evaluate import speculative_decode, teacher_forced_simulation
    from scheduler.request import SamplingParams

    loaded, head, data = load_heldout(args)
    greedy = teacher_forced_simulation(head, data.heldout)
    prompts = [chat_prompt_ids(loaded.tokenizer, p) for p in data.heldout_prompts]
    sampled = speculative_decode(loaded, head, prompts, SamplingParams(temperature=1.0, max_tokens=args.calibration_tokens),
                                 seed=args.seed)
    return {"0": [record_row(r) for r in greedy.records], "1": [record_row(r) for r in sampled.records]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    records = sub.add_parser("records", help="held-out fit records of a head (JSON)")
    add_heldout_arguments(records)
    records.add_argument("--calibration-tokens", type=int, default=128)
    compare = sub.add_parser("table", help="the methods fitted on --fit, scored on --check")
    compare.add_argument("--fit", default=None,
                         help="records from the records command; without it only --checkpoint rows are scored")
    compare.add_argument("--check", nargs="+", required=True, help="eval-draft --records reports, HEAD-SET.json")
    compare.add_argument("--block-size", type=int, default=7)
    compare.add_argument("--methods", default=",".join(METHODS),
                         help="comma-separated; logistic-peak needs records with peaks (taken since it exists)")
    compare.add_argument("--checkpoint", nargs="*", default=[],
                         help="head checkpoints whose stored calibration to score as rows too")
    args = parser.parse_args(argv)
    if args.command == "records":
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(fit_records(args), f)
        return 0
    fit = None
    if args.fit is not None:
        with open(args.fit, encoding="utf-8") as f:
            fit = json.load(f)
    stored = {f"stored: {path}": read_head_config(path).calibration for path in args.checkpoint}
    print("\n".join(table(fit, args.check, args.block_size, methods=args.methods.split(","), stored=stored)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
