"""engine/spec/training/batches.py: anchors inside the trained text, the
labels and target rows of each block position, position weights, and the
block loss over the valid positions only."""
from __future__ import annotations

import math
import random

import torch

from engine.spec.training.batches import block_loss, position_weights, sample_blocks
from engine.spec.training.features import SequenceFeatures
from tests.engine.spec.conftest import make_head, random_sequence

TOP_K = 4
# A prompt (0..5), a trained reply (6..15), a prompt (16, 17), a reply (18, 19).
TRAINABLE = [False] * 6 + [True] * 10 + [False] * 2 + [True] * 2


def sequence(aux_width: int = 8, relabel: bool = False, seed: int = 0) -> SequenceFeatures:
    """A hand-made cached sequence of len(TRAINABLE) tokens."""
    length = len(TRAINABLE)
    gen = torch.Generator().manual_seed(seed)
    return SequenceFeatures(id="s", tokens=random_sequence(length, seed=seed),
                            aux=torch.randn(length, aux_width, generator=gen).half(),
                            topk_ids=torch.randint(3, 500, (length, TOP_K), generator=gen),
                            topk_logprobs=torch.log_softmax(torch.randn(length, TOP_K, generator=gen), -1),
                            trainable=torch.tensor(TRAINABLE), relabel=relabel)


def anchor_candidates() -> list[int]:
    """Anchors a in [1, T-2] whose token and next token are both trained."""
    return [a for a in range(1, len(TRAINABLE) - 1) if TRAINABLE[a] and TRAINABLE[a + 1]]


def test_position_weights_decay_from_one():
    weights = position_weights(4)
    torch.testing.assert_close(weights, torch.tensor([math.exp(-k / 4) for k in range(4)]))
    assert weights[0] == 1 and bool((weights[1:] < weights[:-1]).all())


def test_blocks_start_in_the_trained_text_and_stop_at_untrained_tokens():
    seq, block = sequence(), 5
    blocks = sample_blocks(seq, num_anchors=6, block_size=block, rng=random.Random(0))
    anchors = blocks.anchors.tolist()
    assert len(anchors) == 6 and anchors == sorted(set(anchors)) and set(anchors) <= set(anchor_candidates())
    assert blocks.labels.shape == blocks.valid.shape == blocks.target_rows.shape == (6, block)
    for row, anchor in enumerate(anchors):
        for k in range(1, block + 1):
            position = anchor + k
            valid = position < len(TRAINABLE) and TRAINABLE[position]
            assert bool(blocks.valid[row, k - 1]) == valid, (anchor, k)
            if valid:
                assert blocks.labels[row, k - 1] == seq.tokens[position]
                assert blocks.prev_tokens[row, k - 1] == seq.tokens[position - 1]
                assert blocks.target_rows[row, k - 1] == position - 1
    assert blocks.num_positions == int(blocks.valid.sum()) > 0


def test_relabelled_text_takes_the_targets_argmax_as_labels():
    seq = sequence(relabel=True)
    blocks = sample_blocks(seq, num_anchors=3, block_size=3, rng=random.Random(1))
    valid = blocks.valid
    assert torch.equal(blocks.labels[valid], seq.topk_ids[blocks.target_rows[valid], 0])


def test_anchor_count_is_capped_and_untrained_text_gives_none():
    seq = sequence()
    blocks = sample_blocks(seq, num_anchors=100, block_size=2, rng=random.Random(0))
    assert blocks.anchors.tolist() == anchor_candidates()
    seq.trainable = torch.zeros_like(seq.trainable)
    assert sample_blocks(seq, num_anchors=4, block_size=2, rng=random.Random(0)) is None


def test_block_loss_is_finite_differentiable_and_ignores_invalid_positions(tiny_target):
    head = make_head("dspark", tiny_target, block_size=4)
    seq = sequence(aux_width=len(head.config.aux_layers) * head.config.hidden_size)
    blocks = sample_blocks(seq, num_anchors=8, block_size=4, rng=random.Random(0))
    weights = position_weights(4)
    loss, metrics = block_loss(head, blocks, weights, torch.device("cpu"))
    assert torch.isfinite(loss) and metrics["positions"] == blocks.num_positions
    assert abs(metrics["weight"] - float(weights.expand_as(blocks.valid)[blocks.valid].sum())) < 1e-5
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # Soft labels of rows no valid position reads change nothing.
    unread = torch.ones(len(TRAINABLE), dtype=torch.bool)
    unread[blocks.target_rows[blocks.valid]] = False
    seq.topk_ids[unread] = 7
    again, _ = block_loss(head, blocks, weights, torch.device("cpu"))
    torch.testing.assert_close(again, loss)
    seq.topk_ids[~unread] = 7  # ...while those of the rows it reads do
    assert not torch.allclose(block_loss(head, blocks, weights, torch.device("cpu"))[0], loss)
