"""engine/spec/heads/base.py: every head shares the target's embedding and
LM head (frozen, not its own parameters) and checks they fit."""
from __future__ import annotations

import pytest
import torch

from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS, head_class
from tests.engine.spec.conftest import make_head


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_logits_go_through_the_target_s_lm_head(tiny_target, method):
    head = make_head(method, tiny_target, block_size=3)
    hidden = torch.randn(5, head.config.hidden_size)
    expected = torch.nn.functional.linear(head.norm(hidden), tiny_target.model.lm_head_weight()).float()
    torch.testing.assert_close(head.logits(hidden), expected)
    tokens = torch.tensor([3, 4])
    torch.testing.assert_close(head.embed(tokens), tiny_target.model.model.embed_tokens.weight[tokens])
    assert head.num_own_parameters() == sum(p.numel() for p in head.parameters())
    assert all(p.data_ptr() != tiny_target.model.lm_head_weight().data_ptr() for p in head.parameters())


def test_a_detached_head_or_a_mismatched_target_fails_loudly(tiny_target):
    config = HeadConfig.for_target("dflash", tiny_target.config, block_size=3)
    head = head_class("dflash")(config)
    with pytest.raises(RuntimeError, match="attach_target"):
        head.logits(torch.randn(1, config.hidden_size))
    wrong = head_class("dflash")(HeadConfig.for_target("dflash", tiny_target.config, block_size=3,
                                                       vocab_size=config.vocab_size + 1))
    with pytest.raises(ValueError, match="do not match"):
        wrong.attach_target(tiny_target.model)
