"""`specserve train-draft`, `specserve calibrate-draft` and `specserve eval-draft`.

train-draft: data (pipeline.py: the target's regenerated responses and
teacher-forced ShareGPT conversations -> cached target features) -> a
draft vocabulary -> training (resumable, seeded, progress bars, held-out
tau over time in OUT/log.jsonl) -> STS calibration fitted per sampling
temperature on held-out data -> a deployable head in --out (config.json +
model.safetensors, shared weights excluded) and a report (report.json).
Intermediate data lives in --work-dir (default OUT/data) and is reused by
later runs (`--prepare-only` stops after it). Rerunning a finished run
recalibrates and re-reports.

calibrate-draft: refit a trained head's STS calibration on held-out data
(more of it, or another method) without training again.

eval-draft: real speculative decoding with the head on held-out prompts at
each requested temperature, through the server's engine; tau (block size
fixed, every draft verified), ECE and AUROC of the confidences, raw and
calibrated.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from engine.spec.heads.checkpoint import copy_head_weights, load_head, save_head, save_head_config
from engine.spec.heads.config import HeadConfig
from engine.spec.training.calibrate import methods_label, record_row
from engine.spec.training.cli_arguments import add_calibrate_arguments, add_eval_arguments, add_train_arguments

log = logging.getLogger("specserve.train_draft")


def register(subparsers) -> None:
    """Add train-draft and eval-draft to an argparse subparsers object."""
    train = subparsers.add_parser("train-draft", help="train an EAGLE-3 / DFlash / DSpark draft head")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    calibrate = subparsers.add_parser("calibrate-draft",
                                      help="refit a trained head's STS calibration on held-out data")
    add_calibrate_arguments(calibrate)
    calibrate.set_defaults(func=run_calibrate)
    evaluate = subparsers.add_parser("eval-draft", help="measure a draft head's accepted length and calibration")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)


# ---------------------------------------------------------------- train-draft

def run_train(args: argparse.Namespace) -> int:
    from engine.device import resolve_dtype
    from engine.spec.training.pipeline import native_bf16, prepare_data
    from engine.spec.training.train import TrainConfig, Trainer

    _setup(args)
    loaded = _load_target(args.target, resolve_dtype(args.dtype, args.device), args.device)
    work = args.work_dir or os.path.join(args.out, "data")
    config = _head_config(args, loaded)
    started = time.perf_counter()
    data = prepare_data(args, loaded, work, config.aux_layers)
    data_seconds = time.perf_counter() - started
    vocab = _draft_vocab(args, loaded, data)
    if args.prepare_only:
        print(json.dumps({"train_sequences": len(data.train), "train_tokens": data.train.num_tokens,
                          "trained_tokens": data.train.num_trainable_tokens, "heldout": len(data.heldout),
                          "data_seconds": round(data_seconds, 1),
                          **{k: v for k, v in vocab.items() if k != "ids"}}, indent=2))
        return 0
    head = _build_head(config, loaded, vocab.get("ids"))
    precision = args.precision if args.precision != "auto" else ("bf16" if native_bf16(args.device) else "fp32")
    train_config = TrainConfig(
        steps=_steps(args), max_minutes=args.max_minutes, stop_at_step=args.stop_at_step, lr=args.lr,
        warmup_steps=args.warmup_steps,
        sequences_per_step=args.sequences_per_step,
        anchors_per_sequence=args.anchors, seed=_train_seed(args), eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, eval_sequences=args.eval_sequences, precision=precision,
        device=args.device, dspark_weights=tuple(float(x) for x in args.dspark_loss_weights.split(",")))
    trainer = Trainer(head, data.train, train_config, args.out, {"heldout": data.heldout, **data.eval_sets},
                      log=log.info, progress=not args.no_progress)
    if args.init_from:
        trainer.warm_start(args.init_from)
    history = trainer.run()
    report = _calibrate_and_report(head, data, loaded, args)
    report.update(train_sequences=len(data.train), train_tokens_available=data.train.num_trainable_tokens,
                  heldout_sequences=len(data.heldout), data_seconds=round(data_seconds, 1),
                  train_seconds=round(trainer.elapsed, 1), steps=trainer.step, anchors=trainer.anchors_seen,
                  predicted_positions=trainer.positions_seen,
                  anchors_per_second=round(trainer.anchors_seen / max(trainer.elapsed, 1e-9), 1),
                  precision=precision, parameters=head.num_own_parameters(), init_from=args.init_from,
                  draft_vocab={k: v for k, v in vocab.items() if k != "ids"}, history=history.evals,
                  final_metrics=history.steps[-1] if history.steps else None)
    _write_json(os.path.join(args.out, "report.json"), report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("history",)}, indent=2, default=str))
    return 0


def _train_seed(args) -> int:
    return args.seed if args.train_seed is None else args.train_seed


def _steps(args) -> int:
    if args.train_tokens is None:
        return args.steps
    return -(-args.train_tokens // (args.sequences_per_step * args.anchors))


def _draft_vocab(args, loaded, data) -> dict:
    """The draft vocabulary (counts cached in each training feature
    directory, or --init-from's own) and its coverage of the held-out and
    evaluation sets."""
    from engine.spec.training import vocab as draft_vocab

    if not args.draft_vocab or not data.train_dirs:
        return {}
    if args.init_from:  # a continuation keeps the vocabulary its LM head was trained over
        ids = draft_vocab.checkpoint_draft_vocabulary(args.init_from, args.draft_vocab)
    else:
        counts = draft_vocab.cached_choice_counts(data.train_dirs, loaded.config.vocab_size)
        ids = draft_vocab.draft_vocabulary(counts, args.draft_vocab)
    sets, vocab_size = {"heldout": data.heldout, **data.eval_sets}, loaded.config.vocab_size
    report = {"size": args.draft_vocab, "coverage": {name: round(draft_vocab.coverage(s, ids, vocab_size), 4)
                                                     for name, s in sets.items()}}
    log.info("draft vocabulary of %d tokens covers %s of the target's choices", args.draft_vocab,
             report["coverage"])
    return report | {"ids": ids}


def _head_config(args, loaded) -> HeadConfig:
    overrides = {"block_size": args.block_size, "target": str(loaded.path), "draft_vocab_size": args.draft_vocab}
    if args.layers:
        overrides["num_layers"] = args.layers
    if args.aux_layers:
        overrides["aux_layers"] = tuple(int(x) for x in args.aux_layers.split(","))
    if args.markov_rank is not None:  # 0 is meaningful: no Markov head
        overrides["markov_rank"] = args.markov_rank
    if args.intermediate_size:
        overrides["intermediate_size"] = args.intermediate_size
    return HeadConfig.for_target(args.method, loaded.config, **overrides)


def _build_head(config: HeadConfig, loaded, draft_ids):
    """A fresh head; the Trainer restores its weights from train_state.pt when resuming."""
    from engine.spec.training.recipes import build_head

    head = build_head(config, loaded.model)
    if draft_ids is not None:
        head.set_draft_vocab(draft_ids)
    log.info("%s head: %.2fM parameters of its own (%.1f MB in float16)", config.method,
             head.num_own_parameters() / 1e6, head.num_own_parameters() * 2 / 1e6)
    return head


def _calibrate_and_report(head, data, loaded, args) -> dict:
    """STS per sampling temperature (engine/spec/training/calibrate.py
    `calibrate_per_temperature`), greedy tau of the final head per set,
    and the head saved with its calibration."""
    from engine.spec.training.calibrate import calibrate_per_temperature
    from engine.spec.training.evaluate import teacher_forced_simulation

    if len(data.heldout) == 0:
        log.warning("no held-out sequences: the head stays uncalibrated")
        save_head(head, args.out)
        return {}
    report = calibrate_per_temperature(head, data.heldout, loaded, data.heldout_prompts,
                                       args.calibration_tokens, args.seed, method=args.calibration)
    report["final_greedy_tau"] = {name: teacher_forced_simulation(head, s).tau
                                  for name, s in {"heldout": data.heldout, **data.eval_sets}.items()}
    save_head(head, args.out)
    return report


# ---------------------------------------------------------------- calibrate-draft

def heldout_data(args, loaded, aux_layers):
    """pipeline.prepare_data for the held-out set alone (args: the
    heldout_only data arguments and --work-dir): no training or evaluation
    data is generated or read."""
    from engine.spec.training.pipeline import prepare_data

    only_heldout = argparse.Namespace(**vars(args), data="", conversations=0, eval_data="", responses="target")
    return prepare_data(only_heldout, loaded, args.work_dir, aux_layers)


def run_calibrate(args: argparse.Namespace) -> int:
    """Held-out data only (the --data/--conversations/--eval-data sets are
    not used), STS refitted per temperature, the head saved with it and
    the fit's report in OUT/calibration-report.json."""
    from engine.spec.training.calibrate import calibrate_per_temperature

    _setup(args)
    loaded = _load_target(args.target, _resolve(args.dtype, args.device), args.device)
    head = load_head(args.draft_model, loaded.model, next(loaded.model.parameters()).dtype, args.device)
    data = heldout_data(args, loaded, head.config.aux_layers)
    if len(data.heldout) == 0:
        raise SystemExit("calibrate-draft: --heldout-data gave no held-out sequences")
    report = calibrate_per_temperature(head, data.heldout, loaded, data.heldout_prompts,
                                       args.calibration_tokens, args.seed, method=args.calibration)
    report.update(heldout_sequences=len(data.heldout), heldout_data=args.heldout_data,
                  method=methods_label(args.calibration))
    out = args.out or args.draft_model
    # The weights file is copied, never re-saved: the head was loaded in the
    # target's dtype, and writing it back would round its weights.
    if os.path.abspath(out) != os.path.abspath(args.draft_model):
        copy_head_weights(args.draft_model, out)
    save_head_config(head.config, out)
    _write_json(os.path.join(out, "calibration-report.json"), report)
    print(json.dumps(report, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- eval-draft

def _eval_draft_prompts(args: argparse.Namespace) -> list:
    from engine.spec.training.data import load_prompts
    from engine.spec.training.pipeline import evaluation_prompts

    if not args.whole_eval_sets:
        return load_prompts(args.data, split="test")
    return [prompt for prompts in evaluation_prompts(args.data).values() for prompt in prompts]


def run_eval(args: argparse.Namespace) -> int:
    from engine.spec.training.data import chat_prompt_ids
    from scheduler.request import SamplingParams

    _setup(args)
    loaded = _load_target(args.target, _resolve(args.dtype, args.device), args.device)
    head = load_head(args.draft_model, loaded.model, next(loaded.model.parameters()).dtype, args.device)
    prompts = [ids for p in _eval_draft_prompts(args)
               if len(ids := chat_prompt_ids(loaded.tokenizer, p)) <= args.max_prompt_tokens]
    report = {"draft_model": args.draft_model, "method": head.config.method, "drafter": args.drafter,
              "prompts": len(prompts), "whole_eval_sets": args.whole_eval_sets,
              "block_size": args.block_size, "max_new_tokens": args.max_new_tokens, "results": {}}
    for temperature in args.temperatures:
        params = SamplingParams(temperature=temperature, max_tokens=args.max_new_tokens, seed=args.seed)
        started = time.perf_counter()
        result = _decode_in_batches(loaded, head, prompts, params, args)
        entry = result.summary(args.block_size)
        calibration = head.config.calibration_for(temperature)
        if calibration and args.block_size == head.config.block_size and args.drafter == "head":
            entry["calibrated"] = result.summary(args.block_size, calibration)
            entry["calibrated"].pop("accepted_per_position", None)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if args.records:
            entry["records"] = [record_row(r) for r in result.records]
            entry["record_origins"] = result.origins  # [request number, engine step] of each
        report["results"][f"temperature={temperature:g}"] = entry
        log.info("T=%g: tau %.3f over %d verification steps, %.3f tokens per decode step (%d without drafts)",
                 temperature, result.tau, result.num_steps, result.tokens_per_step, result.num_plain_steps)
    print(json.dumps(report, indent=2, default=str))
    if args.report:
        _write_json(args.report, report)
    return 0


def _decode_in_batches(loaded, head, prompts, params, args):
    from engine.spec.training.evaluate import SpecResult, speculative_decode

    total = SpecResult()
    for start in range(0, len(prompts), args.batch):
        total.merge(speculative_decode(loaded, head, prompts[start: start + args.batch], params,
                                       block_size=args.block_size, seed=args.seed + start,
                                       drafter=args.drafter, first_request=start))
    return total


# ---------------------------------------------------------------- helpers

def _setup(args) -> None:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def _load_target(path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    from engine.models.loader import load_model

    return load_model(path, dtype, device)


def _resolve(dtype: str, device: str) -> torch.dtype:
    from engine.device import resolve_dtype

    return resolve_dtype(dtype, device)


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)


def main(argv=None) -> int:
    """Stand-alone entry: python -m engine.spec.training.cli train-draft ..."""
    parser = argparse.ArgumentParser(prog="specserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
