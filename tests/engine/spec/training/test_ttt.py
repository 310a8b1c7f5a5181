"""engine/spec/training/ttt.py: EAGLE-3's training-time test is causal: a
drafting step from anchor i never sees the tokens it is to predict."""
from __future__ import annotations

import torch

from engine.spec.training.ttt import ttt_forward, ttt_hidden
from tests.engine.spec.conftest import make_head, random_sequence, target_features


def test_a_step_from_an_anchor_ignores_the_sequence_after_it(tiny_target):
    head = make_head("eagle3", tiny_target, block_size=3)
    tokens = random_sequence(seed=7)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchors = torch.tensor([10])
    changed_feats, changed_tokens = feats.clone(), tokens.clone()
    changed_feats[11:] += 1.0
    changed_tokens[12:] = 3  # token 11 is the step's input; 12 on is what it predicts and beyond
    with torch.no_grad():
        before = ttt_forward(head, feats, tokens, anchors, steps=1)[0]
        after = ttt_forward(head, changed_feats, changed_tokens, anchors, steps=1)[0]
    torch.testing.assert_close(after, before)


def test_ttt_hidden_stacks_one_row_per_block_position(tiny_target):
    head = make_head("eagle3", tiny_target, block_size=3)
    tokens = random_sequence(seed=8)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    with torch.no_grad():
        hidden = ttt_hidden(head, feats, tokens, torch.tensor([5, 9]))
    assert hidden.shape == (2, 3, head.config.hidden_size)
