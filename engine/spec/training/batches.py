"""Training blocks of one cached sequence, and their loss.

Every method is trained on blocks: sample anchors a among the trained
positions of a sequence; the block of anchor a predicts tokens
a+1..a+gamma, and position k of it is compared with
- the label x*_k = token_{a+k}, or the target's argmax there when the
  sequence is not the target's own text (`relabel`),
- the target's top-k distribution at row a+k-1 (features.py),
with weight w_k = exp(-(k-1)/gamma) (design/speculation.md s.3). A
position counts only if its token is trained on (an assistant token).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from engine.spec.heads.base import DraftHead
from engine.spec.training.features import SequenceFeatures
from engine.spec.training.losses import DSPARK_WEIGHTS, LossInputs
from engine.spec.training.recipes import recipe_for


@dataclass
class BlockTargets:
    """The blocks of one sequence (index bookkeeping, no [.., V] tensors).

    anchors [N]; labels, prev_tokens, target_rows [N, gamma] long; valid
    [N, gamma] bool (the predicted token exists and is trained on).
    """

    sequence: SequenceFeatures
    anchors: torch.Tensor
    labels: torch.Tensor
    prev_tokens: torch.Tensor
    target_rows: torch.Tensor
    valid: torch.Tensor

    @property
    def num_positions(self) -> int:
        return int(self.valid.sum())


def position_weights(block_size: int) -> torch.Tensor:
    """w_k = exp(-(k-1)/gamma) for k = 1..gamma: [gamma]."""
    return torch.exp(-torch.arange(block_size, dtype=torch.float32) / block_size)


def sample_blocks(seq: SequenceFeatures, num_anchors: int, block_size: int,
                  rng: random.Random) -> BlockTargets | None:
    """Random anchors inside the trained text whose next token is trained
    on too (None when the sequence has none)."""
    tokens, trainable = seq.tokens, seq.trainable
    length = tokens.shape[0]
    usable = trainable[1:-1] & trainable[2:]  # anchor a in [1, T-2] with a and a+1 trained
    candidates = (usable.nonzero().squeeze(1) + 1).tolist()
    if not candidates:
        return None
    anchors = torch.tensor(sorted(rng.sample(candidates, min(num_anchors, len(candidates)))))
    label_pos = anchors[:, None] + torch.arange(1, block_size + 1)  # [N, gamma]
    inside = label_pos < length
    label_pos = label_pos.clamp(max=length - 1)
    valid = inside & trainable[label_pos]
    labels = seq.topk_ids[label_pos - 1, 0] if seq.relabel else tokens[label_pos]
    return BlockTargets(seq, anchors, labels, tokens[label_pos - 1], label_pos - 1, valid)


def block_loss(head: DraftHead, blocks: BlockTargets, weights: torch.Tensor, device: torch.device,
               dspark_weights: tuple[float, float, float] = DSPARK_WEIGHTS) -> tuple[torch.Tensor, dict]:
    """Weighted loss SUM over the valid positions of one sequence's blocks
    (the caller divides by the step's total weight), and summed metrics."""
    seq, valid = blocks.sequence, blocks.valid
    rows = blocks.target_rows[valid]
    hidden = recipe_for(head).hidden(head, seq.aux.to(device, torch.float32), seq.tokens.to(device),
                                     blocks.anchors.to(device))
    inputs = LossInputs(hidden=hidden[valid.to(device)], prev_tokens=blocks.prev_tokens[valid].to(device),
                        labels=blocks.labels[valid].to(device),
                        weights=weights.expand_as(valid)[valid].to(device),
                        topk_ids=seq.topk_ids[rows].to(device), topk_logprobs=seq.topk_logprobs[rows].to(device),
                        dspark_weights=dspark_weights)
    return recipe_for(head).loss(head, inputs)
