"""EAGLE-3: the training-time test (training/ttt.py) computes what the
head's serving routine drafts."""
from __future__ import annotations

import torch

from engine.spec.training.ttt import ttt_forward
from tests.engine.spec.conftest import make_head, random_sequence, serve_one, target_features

BLOCK = 4


def test_training_time_test_shapes(tiny_target):
    head = make_head("eagle3", tiny_target, BLOCK)
    tokens = random_sequence()
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    outputs = ttt_forward(head, feats, tokens, torch.tensor([3, 17, 30]) - 1, BLOCK)
    assert len(outputs) == BLOCK and all(o.shape == (3, tiny_target.config.hidden_size) for o in outputs)


def test_training_time_test_matches_serving(tiny_target):
    head = make_head("eagle3", tiny_target, BLOCK, seed=1)
    tokens = random_sequence(seed=3)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchor = 25
    proposal = serve_one(head, feats, tokens, anchor, BLOCK)
    # Training sees the drafts as the continuation (teacher forcing on them).
    forced = torch.cat([tokens[: anchor + 1], torch.tensor(proposal.token_ids)])
    forced_feats = torch.cat([feats[:anchor], torch.zeros(forced.shape[0] - anchor, feats.shape[1])])
    with torch.no_grad():
        outputs = ttt_forward(head, forced_feats, forced, torch.tensor([anchor - 1]), BLOCK)
    for k, out in enumerate(outputs):
        torch.testing.assert_close(proposal.probs[k], torch.softmax(head.logits(out[0]), -1),
                                   atol=1e-5, rtol=1e-4)
    # No confidence head: the confidence is the peak of the raw distribution
    # (T=1, no filters: probs[k] is that distribution), not the draft's own probability.
    peak = proposal.probs.max(-1).values
    torch.testing.assert_close(torch.tensor(proposal.confidences), peak, atol=1e-5, rtol=1e-4)
