"""engine/spec/training/losses.py: weighted sums over valid positions."""
from __future__ import annotations

import torch

from engine.spec.training.losses import LossInputs, cross_entropy_loss, dspark_loss
from tests.engine.spec.conftest import make_head


def inputs(head, rows=4, target_probs=None, weights=None):
    torch.manual_seed(0)
    return LossInputs(hidden=torch.randn(rows, head.config.hidden_size),
                      prev_tokens=torch.randint(3, 100, (rows,)), labels=torch.randint(3, 100, (rows,)),
                      weights=torch.ones(rows) if weights is None else weights, target_probs=target_probs)


def test_cross_entropy_is_the_weighted_sum_of_per_position_losses(tiny_target):
    head = make_head("dflash", tiny_target, block_size=3)
    x = inputs(head, weights=torch.tensor([1.0, 0.5, 0.0, 2.0]))
    loss, metrics = cross_entropy_loss(head, x)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(head.logits(x.hidden), x.labels, reduction="none")
    torch.testing.assert_close(loss.detach(), (x.weights * ce).sum())
    assert metrics["weight"] == 3.5 and metrics["positions"] == 4


def test_dspark_acceptance_target_is_one_when_draft_and_target_agree(tiny_target):
    head = make_head("dspark", tiny_target, block_size=3)
    x = inputs(head)
    with torch.no_grad():
        own = torch.softmax(head.sequential_logits(head.logits(x.hidden), x.prev_tokens), -1)
    _, same = dspark_loss(head, inputs(head, target_probs=own))
    assert same["l1"] < 1e-4 and abs(same["accept"] - 4.0) < 1e-4
    uniform = torch.full_like(own, 1.0 / own.shape[-1])
    _, other = dspark_loss(head, inputs(head, target_probs=uniform))
    assert other["l1"] > same["l1"] and other["accept"] < same["accept"]
