"""`specserve train-draft` and `specserve eval-draft`.

train-draft: prompts -> the target's responses (through LLMEngine) ->
cached hidden states -> training (resumable, seeded, progress bars) ->
STS calibration on held-out prompts -> a deployable head in --out
(config.json + model.safetensors, shared weights excluded) and a report
(report.json). Intermediate data lives in --work-dir (default OUT/data) and
is reused by later runs.

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

from engine.spec.heads.checkpoint import load_head, save_head
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS

log = logging.getLogger("specserve.train_draft")


# ---------------------------------------------------------------- arguments

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=HEAD_METHODS)
    p.add_argument("--target", default=None, help="target model (HF dir or .gguf; default: bundled SmolLM2)")
    p.add_argument("--out", required=True, help="output directory of the trained head")
    p.add_argument("--work-dir", default=None, help="cache for responses and features (default OUT/data)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="sharegpt:400", help="training prompts, e.g. sharegpt:400,humaneval:40")
    g.add_argument("--heldout-data", default="sharegpt:16,humaneval:8",
                   help="held-out prompts (test split of the same sources)")
    g.add_argument("--responses", default="target", choices=("target", "dataset"),
                   help="target: regenerate with the target (default); dataset: ShareGPT replies, "
                        "labels from the target's argmax")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--gen-temperature", type=float, default=0.0)
    g.add_argument("--gen-batch", type=int, default=16)
    g.add_argument("--max-prompt-tokens", type=int, default=512)
    g.add_argument("--max-len", type=int, default=1024, help="tokens per training sequence")
    g = p.add_argument_group("head")
    g.add_argument("--block-size", type=int, default=7)
    g.add_argument("--layers", type=int, default=None, help="draft layers (default 1 for eagle3, 2 otherwise)")
    g.add_argument("--aux-layers", default=None, help="comma-separated target layers (default low,mid,high)")
    g.add_argument("--markov-rank", type=int, default=None)
    g.add_argument("--intermediate-size", type=int, default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--sequences-per-step", type=int, default=4)
    g.add_argument("--anchors", type=int, default=16, help="blocks per sequence per step")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--checkpoint-every", type=int, default=50)
    _add_common(p)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", required=True, help="head checkpoint directory")
    p.add_argument("--target", default=None, help="target model (default: bundled SmolLM2)")
    p.add_argument("--data", default="humaneval:8,mtbench:8,sharegpt:8", help="prompts (test split)")
    p.add_argument("--block-size", type=int, default=7)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--report", default=None, help="write the JSON report here too")
    _add_common(p)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines instead)")


def register(subparsers) -> None:
    """Add train-draft and eval-draft to an argparse subparsers object."""
    train = subparsers.add_parser("train-draft", help="train an EAGLE-3 / DFlash / DSpark draft head")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    evaluate = subparsers.add_parser("eval-draft", help="measure a draft head's accepted length and calibration")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)


# ---------------------------------------------------------------- train-draft

def run_train(args: argparse.Namespace) -> int:
    from engine.spec.training.features import collect_features
    from engine.spec.training.train import TrainConfig, Trainer

    _setup(args)
    loaded = _load_target(args.target)
    work = args.work_dir or os.path.join(args.out, "data")
    config = _head_config(args, loaded)
    samples, heldout_ids = _training_samples(args, loaded, work)
    started = time.perf_counter()
    features = collect_features(loaded, samples, config.aux_layers, _feature_dir(work, config),
                                max_len=args.max_len, progress=not args.no_progress)
    feature_seconds = time.perf_counter() - started
    heldout, train_set = features.split_by(lambda sid: sid in heldout_ids)
    log.info("features: %d train sequences (%d response tokens), %d held-out",
             len(train_set), train_set.num_response_tokens, len(heldout))
    head = _build_head(config, loaded, args.out)
    train_config = TrainConfig(steps=args.steps, max_minutes=args.max_minutes, lr=args.lr,
                               sequences_per_step=args.sequences_per_step, anchors_per_sequence=args.anchors,
                               seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                               eval_sequences=len(heldout))
    trainer = Trainer(head, train_set, train_config, args.out, heldout, log=log.info, progress=not args.no_progress)
    history = trainer.run()
    report = _calibrate_and_report(head, heldout, args.out)
    report.update(train_sequences=len(train_set), train_response_tokens=train_set.num_response_tokens,
                  heldout_sequences=len(heldout), feature_seconds=round(feature_seconds, 1),
                  train_seconds=round(trainer.elapsed, 1), steps=trainer.step,
                  parameters=head.num_own_parameters(), history=history.evals,
                  final_metrics=history.steps[-1] if history.steps else None)
    _write_json(os.path.join(args.out, "report.json"), report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("history",)}, indent=2, default=str))
    return 0


def _training_samples(args, loaded, work: str):
    """(all samples: train then held-out, ids of the held-out ones)."""
    from engine.spec.training.data import load_prompts
    from engine.spec.training.generate import dataset_samples

    train_prompts = load_prompts(args.data, split="train")
    heldout_prompts = load_prompts(args.heldout_data, split="test")
    engine = None
    if args.responses == "target":
        engine = _engine_for(loaded, args.gen_batch, args.max_prompt_tokens + args.max_new_tokens)
        train = _generate(engine, train_prompts, work, "train", args)
    else:
        train = dataset_samples(loaded.tokenizer, train_prompts, args.max_new_tokens, args.max_prompt_tokens)
    # Held-out responses are always the target's own greedy output: greedy
    # tau by teacher forcing is then exact.
    engine = engine or _engine_for(loaded, args.gen_batch, args.max_prompt_tokens + args.max_new_tokens)
    heldout = _generate(engine, heldout_prompts, work, "heldout", args, temperature=0.0)
    return train + heldout, {s.id for s in heldout}


def _generate(engine, prompts, work: str, name: str, args, temperature: float | None = None):
    from engine.spec.training.generate import generate_responses

    temperature = args.gen_temperature if temperature is None else temperature
    path = os.path.join(work, f"responses-{name}-t{temperature:g}-n{args.max_new_tokens}.jsonl")
    wanted = {p.id for p in prompts}
    samples = generate_responses(engine, prompts, path, max_tokens=args.max_new_tokens, temperature=temperature,
                                 seed=args.seed, batch_size=args.gen_batch,
                                 max_prompt_tokens=args.max_prompt_tokens, progress=not args.no_progress)
    return [s for s in samples if s.id in wanted]


def _engine_for(loaded, batch: int, max_len: int):
    from engine.config import CacheConfig, SchedulerConfig
    from engine.spec.training.generate import engine_for

    blocks = batch * (max_len // 16 + 2) + 16
    return engine_for(loaded, CacheConfig(block_size=16, num_blocks=blocks),
                      SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=2048, max_model_len=max_len + 1))


def _head_config(args, loaded) -> HeadConfig:
    overrides = {"block_size": args.block_size, "target": str(loaded.path)}
    if args.layers:
        overrides["num_layers"] = args.layers
    if args.aux_layers:
        overrides["aux_layers"] = tuple(int(x) for x in args.aux_layers.split(","))
    if args.markov_rank:
        overrides["markov_rank"] = args.markov_rank
    if args.intermediate_size:
        overrides["intermediate_size"] = args.intermediate_size
    return HeadConfig.for_target(args.method, loaded.config, **overrides)


def _feature_dir(work: str, config: HeadConfig) -> str:
    return os.path.join(work, "features-" + "-".join(str(i) for i in config.aux_layers))


def _build_head(config: HeadConfig, loaded, out: str):
    """A fresh head; the Trainer restores its weights from train_state.pt when resuming."""
    from engine.spec.training.recipes import build_head

    head = build_head(config, loaded.model)
    log.info("%s head: %.2fM parameters of its own (%.1f MB in float16)", config.method,
             head.num_own_parameters() / 1e6, head.num_own_parameters() * 2 / 1e6)
    return head


def _calibrate_and_report(head, heldout, out: str) -> dict:
    """Fit STS on held-out blocks (even records), report ECE on the odd ones,
    then store temperatures fitted on all of them in the checkpoint."""
    from engine.spec.training.calibrate import calibration_report, fit_sts
    from engine.spec.training.evaluate import teacher_forced_simulation

    if len(heldout) == 0:
        log.warning("no held-out sequences: the head stays uncalibrated")
        save_head(head, out)
        return {}
    block = head.config.block_size
    result = teacher_forced_simulation(head, heldout)
    fit, check = result.records[0::2], result.records[1::2]
    split_temperatures = fit_sts(fit, block)
    head.config.calibration = fit_sts(result.records, block)
    save_head(head, out)
    return {"heldout_greedy_tau": result.tau, "heldout_steps": result.num_steps,
            "accepted_per_position": result.accepted_per_position,
            "calibration_check_raw": calibration_report(check, block),
            "calibration_check_sts": calibration_report(check, block, split_temperatures),
            "sts_temperatures": head.config.calibration}


# ---------------------------------------------------------------- eval-draft

def run_eval(args: argparse.Namespace) -> int:
    from engine.spec.training.data import chat_prompt_ids, load_prompts
    from scheduler.request import SamplingParams

    _setup(args)
    loaded = _load_target(args.target)
    head = load_head(args.draft_model, loaded.model, dtype=next(loaded.model.parameters()).dtype)
    prompts = [ids for p in load_prompts(args.data, split="test")
               if len(ids := chat_prompt_ids(loaded.tokenizer, p)) <= args.max_prompt_tokens]
    report = {"draft_model": args.draft_model, "method": head.config.method, "prompts": len(prompts),
              "block_size": args.block_size, "max_new_tokens": args.max_new_tokens, "results": {}}
    for temperature in args.temperatures:
        params = SamplingParams(temperature=temperature, max_tokens=args.max_new_tokens, seed=args.seed)
        started = time.perf_counter()
        result = _decode_in_batches(loaded, head, prompts, params, args)
        entry = result.summary(args.block_size)
        if head.config.calibration and args.block_size == head.config.block_size:
            entry["calibrated"] = result.summary(args.block_size, head.config.calibration)
            entry["calibrated"].pop("accepted_per_position", None)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["results"][f"temperature={temperature:g}"] = entry
        log.info("T=%g: tau %.3f over %d steps", temperature, result.tau, result.num_steps)
    print(json.dumps(report, indent=2, default=str))
    if args.report:
        _write_json(args.report, report)
    return 0


def _decode_in_batches(loaded, head, prompts, params, args):
    from engine.spec.training.evaluate import SpecResult, speculative_decode

    total = SpecResult()
    for start in range(0, len(prompts), args.batch):
        total.merge(speculative_decode(loaded, head, prompts[start: start + args.batch], params,
                                       block_size=args.block_size, seed=args.seed + start))
    return total


# ---------------------------------------------------------------- helpers

def _setup(args) -> None:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def _load_target(path):
    from engine.models.loader import load_model

    return load_model(path, torch.float32, "cpu")


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
