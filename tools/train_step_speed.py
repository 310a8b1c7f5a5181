"""How long a training step of a draft head takes on cached features.

Times `Trainer.train_step` (sampling, forward, loss, backward, optimizer)
as train-draft runs it, after a few warm-up steps. To compare two versions
of the training code, run it from a checkout of each, interleaved, on the
same head and features:

    python -m tools.train_step_speed --head checkpoints/dspark-smollm2 \
        --features runs/heads-smollm2/data-c2800-bf16/features-train-conversations --steps 12
"""
from __future__ import annotations

import argparse
import json
import time


def build_trainer(target: str | None, dtype: str, head_dir: str | None, method: str, feature_dirs: list[str],
                  sequences_per_step: int, anchors: int, precision: str, seed: int):
    import torch

    from engine.models.loader import load_model
    from engine.spec.heads.checkpoint import read_head_config, read_head_weights
    from engine.spec.heads.config import HeadConfig
    from engine.spec.training.features import FeatureSet, load_features
    from engine.spec.training.recipes import build_head
    from engine.spec.training.train import TrainConfig, Trainer

    loaded = load_model(target, getattr(torch, dtype), "cpu")
    config = read_head_config(head_dir) if head_dir else HeadConfig.for_target(method, loaded.config)
    head = build_head(config, loaded.model)
    if head_dir and config.draft_vocab_size:
        head.set_draft_vocab(read_head_weights(head_dir)["draft_ids"])
    train_set = FeatureSet.concat([load_features(d) for d in feature_dirs])
    train_config = TrainConfig(steps=1000, lr=3e-4, warmup_steps=10, sequences_per_step=sequences_per_step,
                               anchors_per_sequence=anchors, precision=precision, seed=seed)
    trainer = Trainer(head, train_set, train_config, None, None, log=lambda *_: None, progress=False)
    if head_dir:
        trainer.warm_start(head_dir)
    return trainer


def seconds_per_step(trainer, steps: int, warmup: int) -> tuple[float, int]:
    """(mean seconds per timed step, anchors those steps trained)."""
    for _ in range(warmup):
        trainer.train_step()
    anchors_before, started = trainer.anchors_seen, time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - started) / steps, trainer.anchors_seen - anchors_before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=None, help="target model (default: the embedded default model)")
    parser.add_argument("--dtype", default="bfloat16", help="the target's dtype (its shared LM head)")
    parser.add_argument("--head", default=None, help="a head checkpoint to start from (default: a fresh head)")
    parser.add_argument("--method", default="dspark", help="the fresh head's method (without --head)")
    parser.add_argument("--features", required=True, help="feature directories, comma-separated")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sequences-per-step", type=int, default=4)
    parser.add_argument("--anchors", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    trainer = build_trainer(args.target, args.dtype, args.head, args.method, args.features.split(","),
                            args.sequences_per_step, args.anchors, args.precision, args.seed)
    seconds, anchors = seconds_per_step(trainer, args.steps, args.warmup)
    print(json.dumps({"seconds_per_step": round(seconds, 4), "anchors_per_second": round(anchors / args.steps / seconds, 1),
                      "steps": args.steps, "head": args.head, "features": args.features}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
