"""Training loops for the three heads over cached target features.

Every method is trained on blocks: sample anchors a in the response of a
sequence; the block of anchor a predicts tokens a+1..a+gamma, and position
k of it is compared with
- the label x*_k = token_{a+k} (or the target's argmax there when the
  sequence is not the target's own text),
- the target distribution p_t,k = softmax(LM_head(final_{a+k-1})), computed
  here from cached final hidden states, only for the sampled rows,
with weight w_k = exp(-(k-1)/gamma) (design/speculation.md s.3).

Per family (recipes.py): EAGLE-3 runs the training-time test (ttt.py feeds
the head's own outputs back for gamma steps), DFlash and DSpark predict the
block in one pass (blocks.py); the losses are in losses.py (CE; DSpark adds
the distance to p_t and its confidence head's BCE).

Resumable: `train_state.pt` in the output directory holds the head's
float32 weights, the optimizer, the data-order random state and the step.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from engine.spec.heads.base import DraftHead
from engine.spec.heads.checkpoint import save_head
from engine.spec.training.features import FeatureSet
from engine.spec.training.losses import LossInputs
from engine.spec.training.recipes import recipe_for

STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    """Optimisation settings (the head's own shape lives in HeadConfig)."""

    steps: int = 1000
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time
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


@dataclass
class BlockTargets:
    """Index bookkeeping for the blocks of one sequence (no tensors of size V).

    anchors [N]; labels, prev_tokens, target_rows [N, gamma] long; valid
    [N, gamma] bool (prediction inside the sequence and in the response).
    """

    sequence: int
    anchors: torch.Tensor
    labels: torch.Tensor
    prev_tokens: torch.Tensor
    target_rows: torch.Tensor
    valid: torch.Tensor


def position_weights(block_size: int) -> torch.Tensor:
    """w_k = exp(-(k-1)/gamma) for k = 1..gamma: [gamma]."""
    return torch.exp(-torch.arange(block_size, dtype=torch.float32) / block_size)


def sample_blocks(features: FeatureSet, index: int, num_anchors: int, block_size: int,
                  rng: random.Random) -> BlockTargets | None:
    """Random anchors in the response of sequence `index` (None if it has no room)."""
    tokens = features.tokens[index]
    length, first = tokens.shape[0], max(1, features.prompt_lens[index])
    candidates = range(first, length - 1)  # the anchor needs a next token to predict
    if len(candidates) == 0:
        return None
    anchors = torch.tensor(sorted(rng.sample(candidates, min(num_anchors, len(candidates)))))
    offsets = torch.arange(1, block_size + 1)
    label_pos = anchors[:, None] + offsets  # [N, gamma]
    valid = label_pos < length
    label_pos = label_pos.clamp(max=length - 1)
    return BlockTargets(index, anchors, tokens[label_pos], tokens[label_pos - 1], label_pos - 1, valid)


def block_hidden(head: DraftHead, features: FeatureSet, blocks: BlockTargets) -> torch.Tensor:
    """The head's pre-norm hidden state for every block position: [N, gamma, H]."""
    feats = features.aux[blocks.sequence].float()
    return recipe_for(head).hidden(head, feats, features.tokens[blocks.sequence], blocks.anchors)


@torch.no_grad()
def target_distribution(head: DraftHead, final_rows: torch.Tensor) -> torch.Tensor:
    """p_t from cached final normed hidden states: [M, H] -> [M, V] float32."""
    return torch.softmax(F.linear(final_rows.float(), head.shared.lm_head.float()), dim=-1)


def block_loss(head: DraftHead, features: FeatureSet, blocks: BlockTargets,
               weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Weighted loss SUM over the valid positions of one sequence's blocks
    (the caller divides by the step's total weight), and summed metrics."""
    recipe = recipe_for(head)
    relabel = features.relabel[blocks.sequence]
    rows = blocks.target_rows[blocks.valid]
    p_t = target_distribution(head, features.final[blocks.sequence][rows]) \
        if recipe.needs_target or relabel else None
    inputs = LossInputs(hidden=block_hidden(head, features, blocks)[blocks.valid],
                        prev_tokens=blocks.prev_tokens[blocks.valid],
                        labels=p_t.argmax(-1) if relabel else blocks.labels[blocks.valid],
                        weights=weights.expand_as(blocks.valid)[blocks.valid], target_probs=p_t)
    return recipe.loss(head, inputs)


# ---------------------------------------------------------------- the loop

@dataclass
class TrainHistory:
    """Logged per-step metrics (weighted means) and held-out evaluations."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


class Trainer:
    """Runs optimisation steps on one head; checkpoints and resumes itself."""

    def __init__(self, head: DraftHead, train_set: FeatureSet, config: TrainConfig, out_dir: str | None = None,
                 heldout: FeatureSet | None = None, log=print, progress: bool = True):
        self.head, self.train_set, self.config = head, train_set.select_layers(head.config.aux_layers), config
        self.heldout = heldout.select_layers(head.config.aux_layers) if heldout is not None else None
        self.out_dir, self.log, self.progress = out_dir, log, progress
        self.weights = position_weights(head.config.block_size)
        params = [p for p in head.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.rng = random.Random(config.seed)
        self.step = 0
        self.elapsed = 0.0
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
            loss, metrics = block_loss(self.head, self.train_set, b, self.weights)
            (loss / total_weight).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm = torch.nn.utils.clip_grad_norm_(self.head.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self.step += 1
        return _means(sums, total_weight) | {"grad_norm": float(grad_norm), "step": self.step}

    def _sample_step_blocks(self) -> list[BlockTargets]:
        blocks: list[BlockTargets] = []
        attempts = 0
        while len(blocks) < self.config.sequences_per_step and attempts < 100 * self.config.sequences_per_step:
            attempts += 1
            index = self.rng.randrange(len(self.train_set))
            b = sample_blocks(self.train_set, index, self.config.anchors_per_sequence,
                              self.head.config.block_size, self.rng)
            if b is not None and bool(b.valid.any()):
                blocks.append(b)
        if not blocks:
            raise ValueError("no training sequence has a response to learn from")
        return blocks

    # ---- the loop ----
    def run(self) -> TrainHistory:
        """Train until `steps` (or `max_minutes`), checkpointing on the way."""
        self.resume()
        bar = self._bar()
        started = time.perf_counter() - self.elapsed
        while self.step < self.config.steps:
            metrics = self.train_step()
            self.elapsed = time.perf_counter() - started
            self.history.steps.append(metrics | {"seconds": round(self.elapsed, 1)})
            self._report(bar, metrics)
            if self.config.eval_every and self.step % self.config.eval_every == 0:
                self.evaluate()
            if self.step % self.config.checkpoint_every == 0:
                self.save()
            if self.config.max_minutes is not None and self.elapsed > 60 * self.config.max_minutes:
                self.log(f"stopping at step {self.step}: {self.config.max_minutes} min reached")
                break
        if bar is not None:
            bar.close()
        if self.heldout is not None and (not self.history.evals or self.history.evals[-1]["step"] != self.step):
            self.evaluate()
        self.save()
        return self.history

    def evaluate(self) -> dict:
        """Held-out greedy tau (teacher-forced simulation, exact for greedy targets)."""
        from engine.spec.training.evaluate import teacher_forced_simulation

        if self.heldout is None or len(self.heldout) == 0:
            return {}
        subset = self.heldout.subset(list(range(min(self.config.eval_sequences, len(self.heldout)))))
        result = teacher_forced_simulation(self.head, subset)
        entry = {"step": self.step, "tau": result.tau, "seconds": round(self.elapsed, 1)}
        self.history.evals.append(entry)
        self.log(f"step {self.step}: held-out greedy tau {result.tau:.3f} over {result.num_steps} steps")
        if self.out_dir and (self.best_tau is None or result.tau > self.best_tau):
            self.best_tau = result.tau
            save_head(self.head, os.path.join(self.out_dir, "best"))
        return entry

    # ---- checkpoints ----
    def save(self) -> None:
        """Deployable head (fp16, shared weights excluded) + resumable state."""
        if not self.out_dir:
            return
        self.head.config.training = {"steps": self.step, "seconds": round(self.elapsed, 1),
                                     "config": asdict(self.config), "best_heldout_tau": self.best_tau}
        save_head(self.head, self.out_dir)
        state = {"step": self.step, "elapsed": self.elapsed, "head": self.head.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": self.rng.getstate(),
                 "torch_rng": torch.get_rng_state(), "history": asdict(self.history),
                 "best_tau": self.best_tau, "method": self.head.config.method}
        tmp = os.path.join(self.out_dir, STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(self.out_dir, STATE_FILE))

    def resume(self) -> bool:
        """Continue from `train_state.pt` in out_dir if there is one."""
        path = os.path.join(self.out_dir, STATE_FILE) if self.out_dir else None
        if not path or not os.path.exists(path):
            return False
        state = torch.load(path, weights_only=False)
        if state["method"] != self.head.config.method:
            raise ValueError(f"{path} holds a {state['method']} run, not {self.head.config.method}")
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed, self.best_tau = state["step"], state["elapsed"], state["best_tau"]
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

