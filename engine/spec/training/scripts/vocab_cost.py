"""What a draft vocabulary costs: the same head trained twice at an equal
small budget (same seed, data order and steps), once over the target's
whole vocabulary and once over its N most frequent choices; greedy tau
(teacher-forced) on the held-out and evaluation sets, training speed and
coverage. Reads a prepared work directory (train-draft --prepare-only),
complete or still being extracted (it uses the shards written so far).

  python -m engine.spec.training.scripts.vocab_cost --work-dir runs/heads-smollm2/data \\
      --method dspark --sizes 0 16384 --train-tokens 40000 --out runs/vocab-cost.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import torch

from engine.models.loader import load_model
from engine.spec.heads.config import HeadConfig
from engine.spec.training.evaluate import teacher_forced_simulation
from engine.spec.training.features import FeatureSet, load_features
from engine.spec.training.recipes import build_head
from engine.spec.training.train import TrainConfig, Trainer
from engine.spec.training.vocab import coverage, draft_vocabulary, target_choice_counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True)
    p.add_argument("--method", default="dspark")
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 16384], help="0 = the whole vocabulary")
    p.add_argument("--train-tokens", type=int, default=40000)
    p.add_argument("--markov-rank", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(None)
    directories = sorted(glob.glob(os.path.join(args.work_dir, "features-*")))
    train = FeatureSet.concat([load_features(d) for d in directories if "features-train" in d])
    sets = {os.path.basename(d).removeprefix("features-").removeprefix("eval-"): load_features(d)
            for d in directories if "features-train" not in d}
    counts = target_choice_counts(train, loaded.config.vocab_size)
    report = {"method": args.method, "train_sequences": len(train), "train_tokens": train.num_trainable_tokens,
              "budget_anchors": args.train_tokens, "runs": []}
    for size in args.sizes:
        report["runs"].append(_run(loaded, train, sets, counts, size, args))
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def _run(loaded, train, sets, counts, size: int, args) -> dict:
    overrides = {"draft_vocab_size": size}
    if args.method == "dspark":
        overrides["markov_rank"] = args.markov_rank
    torch.manual_seed(0)
    head = build_head(HeadConfig.for_target(args.method, loaded.config, **overrides), loaded.model)
    entry = {"draft_vocab": size or loaded.config.vocab_size, "parameters": head.num_own_parameters()}
    if size:
        ids = draft_vocabulary(counts, size)
        head.set_draft_vocab(ids)
        entry["coverage"] = {name: round(coverage(s, ids, loaded.config.vocab_size), 4) for name, s in sets.items()}
    config = TrainConfig(steps=-(-args.train_tokens // 128), sequences_per_step=4, anchors_per_sequence=32,
                         lr=1e-3, seed=0)
    trainer = Trainer(head, train, config, None, None, log=lambda *_: None, progress=False)
    started = time.perf_counter()
    trainer.run()
    entry["train_seconds"] = round(time.perf_counter() - started, 1)
    entry["anchors_per_second"] = round(trainer.anchors_seen / entry["train_seconds"], 1)
    entry["greedy_tau"] = {name: round(teacher_forced_simulation(head, s).tau, 4) for name, s in sets.items()}
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
