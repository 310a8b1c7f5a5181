"""engine/spec/training/blocks.py: block heads start from copies of the
target's last layers, and many anchors run in one pass."""
from __future__ import annotations

import torch

from engine.spec.training.blocks import INITIAL_OUTPUT_SCALE, block_hidden, copy_target_layers
from tests.engine.spec.conftest import make_head, random_sequence, target_features


def test_layers_start_as_copies_of_the_target_s_last_layers(tiny_target):
    head = make_head("dflash", tiny_target, block_size=3)
    copy_target_layers(head, tiny_target.model)
    targets = tiny_target.model.model.layers[-len(head.layers):]
    for own, src in zip(head.layers, targets):
        shared = set(own.state_dict()) & set(src.state_dict())
        assert shared
        for name in shared:
            torch.testing.assert_close(own.state_dict()[name], src.state_dict()[name])
    torch.testing.assert_close(head.norm.weight, tiny_target.model.model.norm.weight * INITIAL_OUTPUT_SCALE)


def test_block_hidden_is_the_prediction_rows_of_each_anchor(tiny_target):
    head = make_head("dflash", tiny_target, block_size=3)
    tokens = random_sequence(seed=6)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    with torch.no_grad():
        together = block_hidden(head, feats, tokens, torch.tensor([8, 15, 30]))
        alone = block_hidden(head, feats, tokens, torch.tensor([15]))
    assert together.shape == (3, 3, head.config.hidden_size)
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-4)
