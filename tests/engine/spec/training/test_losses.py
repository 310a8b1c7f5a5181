"""engine/spec/training/losses.py: weighted sums over valid positions,
against the target's top-k soft labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.spec.training.losses import DSPARK_WEIGHTS, LossInputs, cross_entropy_loss, dspark_loss
from tests.engine.spec.conftest import make_head

ROWS = 4


def inputs(head, topk_ids=None, topk_logprobs=None, weights=None, seed=0):
    """ROWS random positions; the target's top-k defaults to 5 random tokens."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, head.config.hidden_size, generator=gen)
    prev_tokens, labels = torch.randint(3, 100, (2, ROWS), generator=gen)
    if topk_ids is None:
        topk_ids = torch.randint(3, 100, (ROWS, 5), generator=gen)
        topk_logprobs = torch.log_softmax(torch.randn(ROWS, 5, generator=gen), -1)
    return LossInputs(hidden=hidden, prev_tokens=prev_tokens, labels=labels,
                      weights=torch.ones(ROWS) if weights is None else weights,
                      topk_ids=topk_ids, topk_logprobs=topk_logprobs)


def draft_log_probs(head, x):
    """The head's own log p_d at every row, as serving computes it."""
    with torch.no_grad():
        return torch.log_softmax(head.sequential_logits(head.logits(x.hidden), x.prev_tokens), -1)


def test_cross_entropy_is_the_weighted_sum_of_per_position_losses(tiny_target):
    head = make_head("dflash", tiny_target, block_size=3)
    x = inputs(head, weights=torch.tensor([1.0, 0.5, 0.0, 2.0]))
    loss, metrics = cross_entropy_loss(head, x)
    with torch.no_grad():
        ce = F.cross_entropy(head.logits(x.hidden), x.labels, reduction="none")
    torch.testing.assert_close(loss.detach(), (x.weights * ce).sum())
    assert metrics["weight"] == 3.5 and metrics["positions"] == ROWS and metrics["covered"] == 3.5
    loss.backward()  # the loss trains the head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters() if p.requires_grad)


def test_dspark_acceptance_target_is_one_when_draft_and_target_agree(tiny_target):
    """With the target's top-k equal to the draft's whole distribution the
    acceptance bound is 1 and the L1 term 0; a target sure of the token the
    draft finds least likely gives an acceptance near 0 and L1 near 2."""
    head = make_head("dspark", tiny_target, block_size=3)
    own = draft_log_probs(head, inputs(head))
    whole = own.topk(head.output_size, -1)  # k = the whole vocabulary: p_t = p_d exactly
    loss, same = dspark_loss(head, inputs(head, whole.indices, whole.values))
    assert same["l1"] < 1e-4 and abs(same["accept"] - ROWS) < 1e-4
    ce_weight, l1_weight, bce_weight = DSPARK_WEIGHTS
    expected = ce_weight * same["ce"] + l1_weight * same["l1"] + bce_weight * same["bce"]
    assert abs(float(loss.detach()) - expected) < 1e-3

    least = own.argmin(-1, keepdim=True)  # the target puts all its mass where the draft puts least
    _, other = dspark_loss(head, inputs(head, least, torch.zeros(ROWS, 1)))
    floor = own.exp().min(-1).values.sum()
    assert abs(other["accept"] - float(floor)) < 1e-4 and other["accept"] < 0.1 * ROWS
    assert abs(other["l1"] - (2 * ROWS - 2 * other["accept"])) < 1e-3
    # The confidence head is pushed toward each case's acceptance rate.
    with torch.no_grad():
        x = inputs(head)
        logit = head.confidence_logit(x.hidden, x.prev_tokens)
    torch.testing.assert_close(torch.tensor(same["bce"]), F.binary_cross_entropy_with_logits(
        logit, torch.ones(ROWS), reduction="sum"), atol=1e-4, rtol=1e-4)
