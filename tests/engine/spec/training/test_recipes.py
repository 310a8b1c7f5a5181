"""Training recipes: found through the head's class hierarchy; build_head
starts block heads from the target's last layers."""
from __future__ import annotations

import pytest
import torch

from engine.spec.heads.base import DraftHead
from engine.spec.heads.block import BlockHead
from engine.spec.heads.dflash import DFlashHead
from engine.spec.heads.dspark import DSparkHead
from engine.spec.heads.eagle3 import Eagle3Head
from engine.spec.training.blocks import INITIAL_OUTPUT_SCALE
from engine.spec.training.recipes import RECIPES, recipe_for
from tests.engine.spec.conftest import make_head


def test_recipes_resolve_through_the_class_hierarchy(tiny_target):
    assert recipe_for(make_head("dflash", tiny_target, 3)) is RECIPES[BlockHead]
    assert recipe_for(make_head("dspark", tiny_target, 3)) is RECIPES[DSparkHead]
    assert recipe_for(make_head("eagle3", tiny_target, 3)) is RECIPES[Eagle3Head]
    assert RECIPES[DSparkHead].needs_target and not RECIPES[BlockHead].needs_target
    assert issubclass(DFlashHead, BlockHead)


def test_a_head_without_a_recipe_fails_loudly(tiny_target):
    class Unregistered(DraftHead):
        pass

    head = Unregistered(make_head("eagle3", tiny_target, 3).config)
    with pytest.raises(KeyError, match="no training recipe"):
        recipe_for(head)


@pytest.mark.parametrize("method", ["dflash", "dspark"])
def test_block_heads_start_from_the_targets_last_layers(tiny_target, method):
    head = make_head(method, tiny_target, 3)
    target = tiny_target.model.model
    for own, src in zip(head.layers, target.layers[-len(head.layers):]):
        torch.testing.assert_close(own.self_attn.o_proj.weight, src.self_attn.o_proj.weight)
        torch.testing.assert_close(own.mlp.down_proj.weight, src.mlp.down_proj.weight)
    torch.testing.assert_close(head.norm.weight, target.norm.weight * INITIAL_OUTPUT_SCALE)


def test_eagle3_starts_small_and_random(tiny_target):
    head = make_head("eagle3", tiny_target, 3)
    assert torch.equal(head.norm.weight, torch.ones_like(head.norm.weight))
    assert 0.01 < float(head.fc.weight.detach().std()) < 0.03
