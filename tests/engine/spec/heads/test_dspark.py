"""DSpark: the anchor row predicts draft 1, a Markov head adds a bigram
term, a confidence head gives the confidences; training and serving agree."""
from __future__ import annotations

import pytest
import torch

from engine.spec.heads.config import HeadConfig
from engine.spec.training.blocks import blocks_for_anchors
from tests.engine.spec.conftest import (check_block_pass_matches_serving, make_head, random_sequence, serve_one,
                                 target_features)

BLOCK = 4


def test_block_layout_and_shapes(tiny_target):
    head = make_head("dspark", tiny_target, BLOCK)
    tokens = random_sequence()
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchors = torch.tensor([3, 17, 30])
    out = blocks_for_anchors(head, feats, tokens, anchors)
    hidden = tiny_target.config.hidden_size
    assert head.block_inputs == BLOCK and head.prediction_rows == slice(0, BLOCK)
    assert out.shape == (3, BLOCK, hidden)
    assert head.markov_bias(anchors).shape == (3, tiny_target.config.vocab_size)
    assert head.confidence_logit(torch.randn(3, hidden), anchors).shape == (3,)


def test_block_training_pass_matches_serving(tiny_target):
    head = make_head("dspark", tiny_target, BLOCK, seed=1)
    check_block_pass_matches_serving(head, tiny_target, lambda logits, prev: logits + head.markov_bias(prev))


def test_confidences_come_from_the_confidence_head(tiny_target):
    head = make_head("dspark", tiny_target, BLOCK, seed=2)
    with torch.no_grad():
        head.confidence.bias.fill_(1.5)  # a fresh head's confidence layer is all zeros
        head.confidence.weight.normal_(std=0.05)
    tokens = random_sequence(seed=5)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchor = 20
    proposal = serve_one(head, feats, tokens, anchor, BLOCK)
    with torch.no_grad():
        hidden = blocks_for_anchors(head, feats, tokens, torch.tensor([anchor]))[0, head.prediction_rows]
        prev = torch.tensor([tokens[anchor].item()] + proposal.token_ids[:-1])
        expected = torch.sigmoid(head.confidence_logit(hidden, prev))
    torch.testing.assert_close(torch.tensor(proposal.confidences), expected, atol=1e-5, rtol=1e-4)


def test_served_bigram_rows_are_the_product_s_each_computed_once(tiny_target):
    """Serving keeps each previous token's bigram row (TokenRows): the rows
    are W1[x] @ W2's, for repeated and new tokens alike."""
    head = make_head("dspark", tiny_target, BLOCK, seed=3)
    with torch.no_grad():
        head.markov_out.normal_(std=0.1)
    prev = torch.tensor([[5, 9], [5, 11]])
    with torch.inference_mode():
        expected = head.markov_bias(prev)  # the plain product, before serving packs W2
        head.use_inference_kernels()
        first, again = head.markov_bias(prev), head.markov_bias(prev[:, :1])
        later = head.markov_bias(torch.tensor([11, 40]))
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, first[:, :1])
    torch.testing.assert_close(later[0], expected[1, 1], atol=1e-5, rtol=1e-5)
    assert head._markov_rows.used == 4  # 5, 9, 11, 40: each computed once


def test_needs_a_markov_rank(tiny_target):
    with pytest.raises(ValueError, match="markov_rank"):
        HeadConfig.for_target("dspark", tiny_target.config, markov_rank=-1)


def test_markov_head_off_is_an_ablation_that_saves_and_serves(tiny_target, tmp_path):
    """Rank 0: no bigram term (logits are the backbone's), confidences from
    norm(h) alone; the checkpoint round-trips."""
    from engine.spec.heads.checkpoint import load_head, save_head
    from engine.spec.training.recipes import build_head

    config = HeadConfig.for_target("dspark", tiny_target.config, block_size=BLOCK, markov_rank=0)
    head = build_head(config, tiny_target.model)
    prev = torch.tensor([3, 9])
    logits = torch.randn(2, tiny_target.config.vocab_size)
    assert torch.equal(head.sequential_logits(logits, prev), logits)
    save_head(head, str(tmp_path / "ckpt"))
    again = load_head(str(tmp_path / "ckpt"), tiny_target.model)
    hidden = torch.randn(2, tiny_target.config.hidden_size)
    torch.testing.assert_close(again.confidence_logit(hidden, prev), head.confidence_logit(hidden, prev).half().float(),
                               atol=1e-2, rtol=1e-2)
    tokens = random_sequence()
    feats, _ = target_features(tiny_target, tokens, config.aux_layers)
    assert len(serve_one(again, feats, tokens, 20, BLOCK).token_ids) == BLOCK
