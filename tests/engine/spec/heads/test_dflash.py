"""DFlash: anchor + block_size masks, and the batched training pass
(training/blocks.py) equals what the head's serving routine drafts."""
from __future__ import annotations

import torch

from engine.spec.training.blocks import blocks_for_anchors
from tests.engine.spec.conftest import check_block_pass_matches_serving, make_head, random_sequence, target_features

BLOCK = 4


def test_block_layout_and_shapes(tiny_target):
    head = make_head("dflash", tiny_target, BLOCK)
    tokens = random_sequence()
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    out = blocks_for_anchors(head, feats, tokens, torch.tensor([3, 17, 30]))
    assert head.block_inputs == BLOCK + 1 and head.prediction_rows == slice(1, BLOCK + 1)
    assert out.shape == (3, BLOCK + 1, tiny_target.config.hidden_size)
    logits = head.logits(out[:, head.prediction_rows])
    assert logits.shape == (3, BLOCK, tiny_target.config.vocab_size)


def test_block_training_pass_matches_serving(tiny_target):
    head = make_head("dflash", tiny_target, BLOCK, seed=1)
    check_block_pass_matches_serving(head, tiny_target, lambda logits, prev: logits)
