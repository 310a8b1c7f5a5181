"""Per-family training losses over the valid positions of one sequence's blocks.

Each returns the weighted loss SUM (the trainer divides by the step's total
weight) and summed metrics.
- cross_entropy_loss (EAGLE-3, DFlash): CE against the labels.
- dspark_loss: 0.1 * CE + 0.9 * ||p_d - p_t||_1 + 1.0 * BCE(c_k, 1 - 0.5 * ||p_d - p_t||_1),
  with the Markov term fed the previous ground-truth token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.spec.heads.base import DraftHead
from engine.spec.heads.dspark import DSparkHead


@dataclass
class LossInputs:
    """The valid block positions of one sequence, flattened to M rows."""

    hidden: torch.Tensor  # [M, H] the head's pre-norm hidden states
    prev_tokens: torch.Tensor  # [M] long: the token before each predicted one
    labels: torch.Tensor  # [M] long
    weights: torch.Tensor  # [M] position weights w_k
    target_probs: torch.Tensor | None  # [M, V] p_t, when the recipe or relabelling needs it


def cross_entropy_loss(head: DraftHead, x: LossInputs) -> tuple[torch.Tensor, dict]:
    _, ce, metrics = _cross_entropy(head, x)
    return (x.weights * ce).sum(), metrics


def dspark_loss(head: DSparkHead, x: LossInputs) -> tuple[torch.Tensor, dict]:
    log_p, ce, metrics = _cross_entropy(head, x)
    w = x.weights
    l1 = (log_p.exp() - x.target_probs).abs().sum(-1)
    accept_target = (1 - 0.5 * l1).detach().clamp(0, 1)  # the analytic acceptance rate
    bce = F.binary_cross_entropy_with_logits(head.confidence_logit(x.hidden, x.prev_tokens), accept_target,
                                             reduction="none")
    metrics.update(l1=float((w * l1).detach().sum()), bce=float((w * bce).detach().sum()),
                   accept=float((w * accept_target).sum()))
    return (w * (0.1 * ce + 0.9 * l1 + 1.0 * bce)).sum(), metrics


def _cross_entropy(head: DraftHead, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(log p_d [M, V], CE [M], summed metrics) with the serving-time logits."""
    w = x.weights
    logits = head.sequential_logits(head.logits(x.hidden), x.prev_tokens)
    log_p = torch.log_softmax(logits, dim=-1)
    ce = -log_p.gather(1, x.labels[:, None]).squeeze(1)
    metrics = {"ce": float((w * ce).detach().sum()), "top1": float((w * (logits.argmax(-1) == x.labels)).sum()),
               "weight": float(w.sum()), "positions": int(w.numel())}
    return log_p, ce, metrics
