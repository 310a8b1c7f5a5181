"""How the trainer handles each head family, registered by head class.

`recipe_for(head)` walks the head's class hierarchy, so a new block head
(a BlockHead subclass) trains like DFlash unless it registers its own
recipe here: one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from engine.spec.heads.base import DraftHead
from engine.spec.heads.block import BlockHead
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.dspark import DSparkHead
from engine.spec.heads.eagle3 import Eagle3Head
from engine.spec.heads.registry import head_class
from engine.spec.training.blocks import block_hidden, copy_target_layers
from engine.spec.training.losses import cross_entropy_loss, dspark_loss
from engine.spec.training.ttt import ttt_hidden


@dataclass(frozen=True)
class Recipe:
    """Training-side behaviour of one head family."""

    # (head, feats [T, A*H], tokens [T], anchors [N]) -> pre-norm hidden [N, block_size, H]
    hidden: Callable
    # (head, LossInputs) -> (weighted loss sum, summed metrics)
    loss: Callable
    # (head, target model): a start better than random, or None
    init_from_target: Callable | None = None
    # The loss compares the head with the target's distribution p_t.
    needs_target: bool = False


RECIPES: dict[type, Recipe] = {
    Eagle3Head: Recipe(ttt_hidden, cross_entropy_loss),
    BlockHead: Recipe(block_hidden, cross_entropy_loss, copy_target_layers),
    DSparkHead: Recipe(block_hidden, dspark_loss, copy_target_layers, needs_target=True),
}


def recipe_for(head: DraftHead) -> Recipe:
    """The recipe of the head's class, or of its nearest registered base."""
    for cls in type(head).__mro__:
        if cls in RECIPES:
            return RECIPES[cls]
    raise KeyError(f"no training recipe registered for {type(head).__name__}")


def build_head(config: HeadConfig, target_model=None) -> DraftHead:
    """A freshly initialised head, attached to `target_model` when given
    (and then started from it as its recipe says)."""
    head = head_class(config.method)(config)
    _init_linear_weights(head)
    if target_model is not None:
        head.attach_target(target_model)
        init = recipe_for(head).init_from_target
        if init is not None:
            init(head, target_model)
    return head


def _init_linear_weights(head: nn.Module) -> None:
    """Small normal init for projections (the head learns on top of a frozen LM head)."""
    for name, module in head.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("confidence"):
            nn.init.normal_(module.weight, std=0.02)
