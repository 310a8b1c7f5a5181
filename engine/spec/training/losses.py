"""Per-family training losses over the valid positions of one sequence's blocks.

Each returns the weighted loss SUM (the trainer divides by the step's total
weight) and summed metrics. The target's distribution p_t is known only on
its top-k tokens (engine/spec/training/features.py); the head's p_d lives
on its draft vocabulary (heads/base.py).
- cross_entropy_loss (EAGLE-3, DFlash): CE against the labels; a label
  outside the draft vocabulary cannot be drafted and is left out.
- dspark_loss: 0.1 * CE + 0.9 * ||p_d - p_t||_1 + 1.0 * BCE(c_k, 1 - 0.5 * ||p_d - p_t||_1),
  with the Markov term fed the previous ground-truth token. With p_t known
  on its top-k only, 1 - 0.5 * ||p_d - p_t||_1 = sum_v min(p_d(v), p_t(v))
  is summed over the top-k: a lower bound of the acceptance rate, short of
  it by at most the target's mass outside its top-k, and the L1 term is
  2 - 2 * that bound (the L1 distance with p_t taken as zero off its top-k,
  plus that mass: the same gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.spec.heads.base import DraftHead
from engine.spec.heads.dspark import DSparkHead

DSPARK_WEIGHTS = (0.1, 0.9, 1.0)  # CE, L1, confidence BCE (design/speculation.md s.3)


@dataclass
class LossInputs:
    """The valid block positions of one sequence, flattened to M rows."""

    hidden: torch.Tensor  # [M, H] the head's pre-norm hidden states
    prev_tokens: torch.Tensor  # [M] long: the token before each predicted one
    labels: torch.Tensor  # [M] long target ids
    weights: torch.Tensor  # [M] position weights w_k
    topk_ids: torch.Tensor  # [M, k] long: the target's most likely tokens there
    topk_logprobs: torch.Tensor  # [M, k] their log-probabilities
    dspark_weights: tuple[float, float, float] = DSPARK_WEIGHTS


def cross_entropy_loss(head: DraftHead, x: LossInputs) -> tuple[torch.Tensor, dict]:
    _, ce, metrics = _cross_entropy(head, x)
    return (x.weights * ce).sum(), metrics


def dspark_loss(head: DSparkHead, x: LossInputs) -> tuple[torch.Tensor, dict]:
    log_p, ce, metrics = _cross_entropy(head, x)
    w = x.weights
    accept = acceptance_lower_bound(head, log_p, x)
    l1 = 2 - 2 * accept
    target = accept.detach().clamp(0, 1)  # the analytic acceptance rate
    bce = F.binary_cross_entropy_with_logits(head.confidence_logit(x.hidden, x.prev_tokens), target,
                                             reduction="none")
    metrics.update(l1=float((w * l1).detach().sum()), bce=float((w * bce).detach().sum()),
                   accept=float((w * target).sum()))
    ce_weight, l1_weight, bce_weight = x.dspark_weights
    return (w * (ce_weight * ce + l1_weight * l1 + bce_weight * bce)).sum(), metrics


def acceptance_lower_bound(head: DraftHead, log_p: torch.Tensor, x: LossInputs) -> torch.Tensor:
    """sum over the target's top-k of min(p_d, p_t): [M] (see module doc)."""
    ids = head.to_draft_ids(x.topk_ids)
    inside = ids < head.output_size
    # exp of the k gathered columns, not of all V: most of a trained head's
    # log-probabilities lie below -87, where exp() underflows and ATen's
    # vectorised CPU kernel takes a slow scalar path (20-60x); the values
    # are the same.
    p_d = log_p.gather(1, ids.clamp(max=head.output_size - 1)).exp()
    return (torch.minimum(p_d, x.topk_logprobs.exp()) * inside).sum(-1)


def _cross_entropy(head: DraftHead, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(log p_d [M, output_size], CE [M] (0 where the label is outside the
    draft vocabulary), summed metrics) with the serving-time logits."""
    w = x.weights
    logits = head.sequential_logits(head.logits(x.hidden), x.prev_tokens)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    labels = head.to_draft_ids(x.labels)
    inside = labels < head.output_size
    label_column = labels.clamp(max=head.output_size - 1)[:, None]
    ce = -log_p.gather(1, label_column).squeeze(1) * inside
    # The label is the head's top choice (a tie counts): amax is a
    # vectorised reduction, argmax over [M, V] a scalar loop 12x slower.
    top = logits.detach()
    hit = (top.gather(1, label_column).squeeze(1) >= top.amax(-1)) & inside
    metrics = {"ce": float((w * ce).detach().sum()), "top1": float((w * hit).sum()),
               "covered": float((w * inside).sum()), "weight": float(w.sum()), "positions": int(w.numel())}
    return log_p, ce, metrics
