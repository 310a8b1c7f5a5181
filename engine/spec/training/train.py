"""The training loop for the three heads over cached target features.

Per family (recipes.py): EAGLE-3 runs the training-time test (ttt.py feeds
the head's own outputs back for gamma steps), DFlash and DSpark predict the
block in one pass (blocks.py); blocks and losses: batches.py, losses.py.

Budget: `TrainConfig.steps` optimizer steps of `sequences_per_step` x
`anchors_per_sequence` blocks; the number of anchors trained on (one per
block: a token of text whose next gamma tokens the head predicts) is the
budget in training tokens, reported with the predicted positions.
Precision: `bf16` runs the forward and backward under bfloat16 autocast
(master weights and optimizer in float32), `fp32` does not. Device: any
torch device (features are read from disk on the CPU and moved per step).

Resumable exactly: `train_state.pt` in the output directory holds the
head's float32 weights, the optimizer, the data-order random state, the
step and the counters. Held-out greedy tau (teacher-forced simulation)
per evaluation set goes to `log.jsonl` in the output directory over time;
the best head on the first set is saved to `best/`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch

from engine.spec.heads.base import DraftHead
from engine.spec.heads.checkpoint import read_head_config, read_head_weights, save_head
from engine.spec.training.batches import BlockTargets, block_loss, position_weights, sample_blocks
from engine.spec.training.features import FeatureSet
from engine.spec.training.losses import DSPARK_WEIGHTS

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Optimisation settings (the head's own shape lives in HeadConfig)."""

    steps: int = 1000
    max_minutes: float | None = None  # stop (with a checkpoint) after this much training time
    # Stop (with a checkpoint) at this step while the learning rate follows the
    # schedule of `steps`: an ablation that matches a full run's first part.
    stop_at_step: int | None = None
    sequences_per_step: int = 4
    anchors_per_sequence: int = 16
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = 0  # held-out greedy tau every N steps (0 = only at the end)
    eval_sequences: int = 16
    precision: str = "fp32"
    device: str = "cpu"
    dspark_weights: tuple[float, float, float] = DSPARK_WEIGHTS

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")

    @property
    def anchors_per_step(self) -> int:
        return self.sequences_per_step * self.anchors_per_sequence


@dataclass
class TrainHistory:
    """Logged per-step metrics (weighted means) and held-out evaluations."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


class Trainer:
    """Runs optimisation steps on one head; checkpoints and resumes itself.

    `heldout` is a FeatureSet of held-out greedy responses, or a dict of
    named sets (the first one picks `best/`; the others are only logged).
    """

    def __init__(self, head: DraftHead, train_set: FeatureSet, config: TrainConfig, out_dir: str | None = None,
                 heldout: FeatureSet | dict[str, FeatureSet] | None = None, log=print, progress: bool = True):
        self.head, self.config = head.to(config.device), config
        self.train_set = train_set.select_layers(head.config.aux_layers)
        sets = heldout if isinstance(heldout, dict) else ({"heldout": heldout} if heldout is not None else {})
        self.eval_sets = {name: s.select_layers(head.config.aux_layers) for name, s in sets.items() if len(s)}
        self.out_dir, self.log, self.progress = out_dir, log, progress
        self.weights = position_weights(head.config.block_size)
        params = [p for p in head.parameters() if p.requires_grad]
        # The fused update (one kernel over all parameters) saves ~5% of a CPU step.
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
        self.rng = random.Random(config.seed)
        self.step, self.elapsed, self.eval_seconds = 0, 0.0, 0.0
        self.anchors_seen = self.positions_seen = 0
        self.best_tau: float | None = None
        self.history = TrainHistory()
        torch.manual_seed(config.seed)
        if len(self.train_set) == 0:
            raise ValueError("no training sequences")

    # ---- schedule ----
    def learning_rate(self, step: int) -> float:
        """Linear warm-up then cosine decay to min_lr_ratio * lr."""
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # ---- one step ----
    def train_step(self) -> dict:
        """One optimizer step over `sequences_per_step` random sequences."""
        self.head.train()
        blocks = self._sample_step_blocks()
        total_weight = sum(float(self.weights.expand_as(b.valid)[b.valid].sum()) for b in blocks)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for b in blocks:  # one backward per sequence keeps [positions, V] tensors small
            with self._autocast():
                loss, metrics = block_loss(self.head, b, self.weights, self._device, self.config.dspark_weights)
            (loss / total_weight).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm = torch.nn.utils.clip_grad_norm_(self.head.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self.step += 1
        self.anchors_seen += sum(b.anchors.numel() for b in blocks)
        self.positions_seen += sum(b.num_positions for b in blocks)
        return _means(sums, total_weight) | {"grad_norm": float(grad_norm), "step": self.step,
                                             "anchors": self.anchors_seen}

    @property
    def _device(self) -> torch.device:
        return torch.device(self.config.device)

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sample_step_blocks(self) -> list[BlockTargets]:
        blocks: list[BlockTargets] = []
        attempts = 0
        while len(blocks) < self.config.sequences_per_step and attempts < 100 * self.config.sequences_per_step:
            attempts += 1
            seq = self.train_set.sequence(self.rng.randrange(len(self.train_set)))
            b = sample_blocks(seq, self.config.anchors_per_sequence, self.head.config.block_size, self.rng)
            if b is not None and bool(b.valid.any()):
                blocks.append(b)
        if not blocks:
            raise ValueError("no training sequence has a response to learn from")
        return blocks

    def warm_start(self, directory: str) -> None:
        """Start the head from the checkpoint in `directory` (train-draft
        --init-from): its weights (strict), and the anchors, positions and
        seconds it was trained for, so that the log's tau-against-anchors
        curve goes on from there (a resumed run then restores its own
        counts). The checkpoint must be the same method and shape with the
        same draft vocabulary (the data it was trained on); a mismatch
        fails loudly."""
        config = read_head_config(directory)
        if config.method != self.head.config.method:
            raise ValueError(f"--init-from {directory} is a {config.method} head, not {self.head.config.method}")
        state, own = read_head_weights(directory), self.head.state_dict()
        if "draft_ids" in own and "draft_ids" in state and not torch.equal(state["draft_ids"], own["draft_ids"]):
            raise ValueError(f"--init-from {directory} has another draft vocabulary than this run's data")
        self.head.load_state_dict(state, strict=True)  # copied into the head's own dtypes
        trained = config.training or {}
        self.anchors_seen, self.positions_seen = trained.get("anchors", 0), trained.get("positions", 0)
        self.elapsed = trained.get("train_seconds", 0.0)
        self.log(f"warm start from {directory} ({self.anchors_seen} anchors trained)")

    # ---- the loop ----
    def run(self) -> TrainHistory:
        """Train until `steps` (or `stop_at_step`, or `max_minutes` of training), checkpointing on the way."""
        self.resume()
        bar = self._bar()
        last_step = min(self.config.steps, self.config.stop_at_step or self.config.steps)
        while self.step < last_step:
            started = time.perf_counter()
            metrics = self.train_step()
            self.elapsed += time.perf_counter() - started
            self.history.steps.append(metrics | {"seconds": round(self.elapsed, 1)})
            self._report(bar, metrics)
            if self.config.eval_every and self.step % self.config.eval_every == 0:
                self.evaluate()
            if self.step % self.config.checkpoint_every == 0:
                self.save()
            if self.config.max_minutes is not None and self.elapsed > 60 * self.config.max_minutes:
                self.log(f"stopping at step {self.step}: {self.config.max_minutes} min of training reached")
                break
        if bar is not None:
            bar.close()
        if self.eval_sets and (not self.history.evals or self.history.evals[-1]["step"] != self.step):
            self.evaluate()
        self.save()
        return self.history

    def evaluate(self) -> dict:
        """Greedy tau per evaluation set (teacher-forced simulation, exact
        for greedy targets), logged to log.jsonl; the first set picks best/."""
        from engine.spec.training.evaluate import teacher_forced_simulation

        if not self.eval_sets:
            return {}
        started = time.perf_counter()
        taus = {}
        for name, features in self.eval_sets.items():
            subset = features.subset(list(range(min(self.config.eval_sequences, len(features)))))
            taus[name] = teacher_forced_simulation(self.head, subset).tau
        self.eval_seconds += time.perf_counter() - started
        entry = {"step": self.step, "anchors": self.anchors_seen, "positions": self.positions_seen,
                 "tau": taus, "train_seconds": round(self.elapsed, 1), "eval_seconds": round(self.eval_seconds, 1)}
        self.history.evals.append(entry)
        self._append_log(entry | {"event": "eval"})
        self.log(f"step {self.step} ({self.anchors_seen} anchors): greedy tau "
                 + ", ".join(f"{k} {v:.3f}" for k, v in taus.items()))
        first = next(iter(taus.values()))
        if self.out_dir and (self.best_tau is None or first > self.best_tau):
            self.best_tau = first
            save_head(self.head, os.path.join(self.out_dir, "best"))
        return entry

    def _append_log(self, entry: dict) -> None:
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, LOG_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(entry | {"time": round(time.time(), 1)}) + "\n")

    # ---- checkpoints ----
    def save(self) -> None:
        """Deployable head (fp16, shared weights excluded) + resumable state."""
        if not self.out_dir:
            return
        self.head.config.training = {"steps": self.step, "anchors": self.anchors_seen,
                                     "positions": self.positions_seen, "train_seconds": round(self.elapsed, 1),
                                     "config": asdict(self.config), "best_heldout_tau": self.best_tau}
        save_head(self.head, self.out_dir)
        state = {"step": self.step, "elapsed": self.elapsed, "eval_seconds": self.eval_seconds,
                 "anchors": self.anchors_seen, "positions": self.positions_seen,
                 "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(), "history": asdict(self.history),
                 "best_tau": self.best_tau, "method": self.head.config.method}
        tmp = os.path.join(self.out_dir, STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(self.out_dir, STATE_FILE))
        self._append_log({"event": "checkpoint", "step": self.step, "anchors": self.anchors_seen,
                          "train_seconds": round(self.elapsed, 1)} | _last_metrics(self.history))

    def resume(self) -> bool:
        """Continue from `train_state.pt` in out_dir if there is one."""
        path = os.path.join(self.out_dir, STATE_FILE) if self.out_dir else None
        if not path or not os.path.exists(path):
            return False
        state = torch.load(path, weights_only=False, map_location=self._device)
        if state["method"] != self.head.config.method:
            raise ValueError(f"{path} holds a {state['method']} run, not {self.head.config.method}")
        self.head.load_state_dict(state["head"])
        own_update = [group["fused"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, fused in zip(self.optimizer.param_groups, own_update):
            group["fused"] = fused  # how the update runs is this run's choice (a state saved unfused loads too)
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.elapsed, self.best_tau = state["step"], state["elapsed"], state["best_tau"]
        self.eval_seconds = state.get("eval_seconds", 0.0)
        self.anchors_seen, self.positions_seen = state.get("anchors", 0), state.get("positions", 0)
        self.history = TrainHistory(**state["history"])
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def _bar(self):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.config.steps, initial=self.step, desc=f"train {self.head.config.method}",
                    dynamic_ncols=True)

    def _report(self, bar, metrics: dict) -> None:
        shown = {k: round(v, 3) for k, v in metrics.items() if k in ("loss", "ce", "l1", "top1", "accept")}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(shown)
        elif self.step % 10 == 0:
            self.log(f"step {self.step}: {shown}")


def _means(sums: dict, total_weight: float) -> dict:
    """Weighted sums -> weighted means (counts stay counts)."""
    return {k: (v if k == "positions" else v / total_weight) for k, v in sums.items() if k != "weight"}


def _last_metrics(history: TrainHistory, window: int = 50) -> dict:
    """Means of the last `window` steps' metrics (for the log)."""
    recent = history.steps[-window:]
    keys = ("loss", "ce", "top1", "l1", "accept", "covered")
    return {k: round(sum(s[k] for s in recent) / len(recent), 4) for k in keys if recent and k in recent[0]}
