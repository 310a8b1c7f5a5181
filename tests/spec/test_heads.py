"""Draft heads: shapes, checkpoints, and that training and serving compute
the same thing (the training-side batched passes equal the drafter's)."""
from __future__ import annotations

import os

import pytest
import torch

from engine.spec.base import DraftInput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.checkpoint import load_head, read_head_config, save_head
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.dspark import DSparkHead
from engine.spec.heads.registry import HEAD_METHODS as METHODS, head_class
from engine.spec.training.blocks import blocks_for_anchors
from engine.spec.training.recipes import build_head
from engine.spec.training.ttt import ttt_forward
from scheduler.request import Request, SamplingParams
from tests.spec.conftest import target_features

BLOCK = 4


def make_head(method, loaded, seed=0):
    torch.manual_seed(seed)
    return build_head(HeadConfig.for_target(method, loaded.config, block_size=BLOCK), loaded.model)


def sequence(length=40, seed=0, vocab=500):
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_forward_shapes(tiny_target, method):
    head = make_head(method, tiny_target)
    tokens = sequence()
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    hidden = tiny_target.config.hidden_size
    anchors = torch.tensor([3, 17, 30])
    if method == "eagle3":
        outputs = ttt_forward(head, feats, tokens, anchors - 1, BLOCK)
        assert len(outputs) == BLOCK and all(o.shape == (3, hidden) for o in outputs)
    else:
        out = blocks_for_anchors(head, feats, tokens, anchors)
        assert out.shape == (3, head.block_inputs, hidden)
        assert head.block_inputs == (BLOCK + 1 if method == "dflash" else BLOCK)
        logits = head.logits(out[:, head.prediction_rows])
        assert logits.shape == (3, BLOCK, tiny_target.config.vocab_size)
    if isinstance(head, DSparkHead):
        assert head.markov_bias(anchors).shape == (3, tiny_target.config.vocab_size)
        assert head.confidence_logit(torch.randn(3, hidden), anchors).shape == (3,)


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_round_trip(tiny_target, method, tmp_path):
    head = make_head(method, tiny_target)
    head.config.calibration = [1.0, 1.5, 2.0, 0.5]
    save_head(head, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = load_head(str(tmp_path), tiny_target.model)
    assert read_head_config(str(tmp_path)) == head.config
    own = head.state_dict()
    for name, tensor in loaded.state_dict().items():
        # Saved in float16: equal up to its rounding.
        torch.testing.assert_close(tensor, own[name].half().float())
    # The shared embedding / LM head are not in the file; they come from the target.
    shape = (tiny_target.config.vocab_size, tiny_target.config.hidden_size)
    assert not any(tuple(t.shape) == shape for t in own.values())
    assert loaded.shared.lm_head.data_ptr() == tiny_target.model.model.embed_tokens.weight.data_ptr()


def test_checkpoint_refuses_another_target(tiny_target, tmp_path, tmp_path_factory):
    from engine.models.loader import load_model
    from tests.tiny_model import make_tiny_model_dir

    save_head(make_head("dspark", tiny_target), str(tmp_path))
    other = load_model(make_tiny_model_dir(tmp_path_factory.mktemp("other"), num_layers=2))
    with pytest.raises(ValueError, match="another target"):
        load_head(str(tmp_path), other.model)


def drafter_probs(head, feats, tokens, anchor: int):
    """Serve one request whose last token is tokens[anchor]; sampling at T=1
    with no filters, so probs[k] is the head's plain softmax."""
    params = SamplingParams(temperature=1.0, max_tokens=64)
    request = Request("r", tokens[: anchor + 1].tolist(), params)
    request.num_computed_tokens = anchor
    drafter = HeadDrafter(head)
    item = DraftInput(request, BLOCK, torch.Generator().manual_seed(0), feats[:anchor])
    return drafter.propose([item], {})["r"]


@pytest.mark.parametrize("method", ["dflash", "dspark"])
def test_block_training_pass_matches_serving(tiny_target, method):
    head = make_head(method, tiny_target, seed=1)
    tokens = sequence(seed=2)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchors = torch.tensor([7, 21, 33])
    with torch.no_grad():
        hidden = blocks_for_anchors(head, feats, tokens, anchors)[:, head.prediction_rows]
        base = head.logits(hidden)
    for row, anchor in enumerate(anchors.tolist()):
        proposal = drafter_probs(head, feats, tokens, anchor)
        prev = [tokens[anchor].item()] + proposal.token_ids[:-1]
        for k in range(BLOCK):
            logits = base[row, k]
            if method == "dspark":
                logits = logits + head.markov_bias(torch.tensor(prev[k]))
            torch.testing.assert_close(proposal.probs[k], torch.softmax(logits, -1), atol=1e-5, rtol=1e-4)


def test_eagle3_training_time_test_matches_serving(tiny_target):
    head = make_head("eagle3", tiny_target, seed=1)
    tokens = sequence(seed=3)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    anchor = 25
    proposal = drafter_probs(head, feats, tokens, anchor)
    # Training sees the drafts as the continuation (teacher forcing on them).
    forced = torch.cat([tokens[: anchor + 1], torch.tensor(proposal.token_ids)])
    forced_feats = torch.cat([feats[:anchor], torch.zeros(forced.shape[0] - anchor, feats.shape[1])])
    with torch.no_grad():
        outputs = ttt_forward(head, forced_feats, forced, torch.tensor([anchor - 1]), BLOCK)
    for k, out in enumerate(outputs):
        torch.testing.assert_close(proposal.probs[k], torch.softmax(head.logits(out[0]), -1),
                                   atol=1e-5, rtol=1e-4)


def test_default_sizes_for_smollm2_fit_the_budget():
    from engine.config import ModelConfig

    smol = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                       num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)
    for method in METHODS:
        config = HeadConfig.for_target(method, smol)
        with torch.device("meta"):
            params = head_class(method)(config).num_own_parameters()
        assert params * 2 <= 25 * 2**20, (method, params)
    assert HeadConfig.for_target("eagle3", smol).aux_layers == (2, 15, 27)
