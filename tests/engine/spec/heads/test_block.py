"""engine/spec/heads/block.py: the block backbone DFlash and DSpark share:
a block sees the target context before its anchor and nothing after."""
from __future__ import annotations

import pytest
import torch

from engine.spec.training.blocks import blocks_for_anchors
from tests.engine.spec.conftest import make_head, random_sequence, target_features


@pytest.mark.parametrize("method", ["dflash", "dspark"])
def test_a_block_ignores_the_context_after_its_anchor(tiny_target, method):
    head = make_head(method, tiny_target, block_size=3)
    tokens = random_sequence(seed=5)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    changed = feats.clone()
    changed[20:] += 1.0  # everything from position 20 on
    with torch.no_grad():
        before = blocks_for_anchors(head, feats, tokens, torch.tensor([10, 20]))
        after = blocks_for_anchors(head, changed, tokens, torch.tensor([10, 20]))
    torch.testing.assert_close(after[0], before[0])  # anchor 10 sees positions < 10 only
    torch.testing.assert_close(after[1], before[1])  # anchor 20 sees positions < 20 only
    assert before.shape == (2, head.block_inputs, head.config.hidden_size)
    assert len(range(head.block_inputs)[head.prediction_rows]) == 3


def test_the_context_projection_is_normed(tiny_target):
    head = make_head("dflash", tiny_target, block_size=3)
    feats = torch.randn(4, head.config.feature_size)
    with torch.no_grad():
        ctx = head.context(feats)
    assert ctx.shape == (4, head.config.hidden_size)
    torch.testing.assert_close(ctx, head.context_norm(head.fc(feats)))
