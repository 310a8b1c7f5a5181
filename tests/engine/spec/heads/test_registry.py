"""The head registry is the one list of head methods, and adding a family
is one module plus one registration line."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch

from engine import config as engine_config
from engine.spec.heads import registry
from engine.spec.registry import drafter_spec, method_names
from engine.spec.heads.base import DraftHead
from engine.spec.heads.checkpoint import load_head, save_head
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.dflash import DFlashHead
from engine.spec.training.recipes import build_head
from tests.engine.spec.conftest import random_sequence, serve_one, target_features


def test_every_head_family_is_a_speculative_method_needing_a_checkpoint():
    assert registry.HEAD_METHODS == tuple(registry.HEAD_FAMILIES)
    assert set(registry.HEAD_METHODS) <= set(method_names())
    for method in registry.HEAD_METHODS:
        assert drafter_spec(method).needs_draft_model
        assert engine_config.SpeculativeConfig(method=method, draft_model="ckpt").method == method


def test_training_cli_offers_the_registered_methods():
    import argparse

    from engine.spec.training.cli_arguments import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    method = next(a for a in parser._actions if a.dest == "method")
    assert tuple(method.choices) == registry.HEAD_METHODS


def test_every_registered_family_is_a_draft_head():
    for method in registry.HEAD_METHODS:
        assert issubclass(registry.head_class(method), DraftHead)


def test_reading_the_registry_does_not_import_torch():
    code = ("import sys, engine.config, engine.spec.heads.registry; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    root = str(pathlib.Path(__file__).resolve().parents[4])  # the repository root
    env = dict(os.environ, PYTHONPATH=root)
    assert subprocess.run([sys.executable, "-c", code], cwd=root, env=env).returncode == 0


class ShiftedDFlashHead(DFlashHead):
    """A made-up family: DFlash whose drafts never repeat the previous token."""

    def sequential_logits(self, logits, prev_tokens):
        return logits.scatter(-1, prev_tokens[..., None], float("-inf"))


def test_a_new_family_is_a_module_and_one_registration_line(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.HEAD_FAMILIES, "shifted", f"{__name__}:ShiftedDFlashHead")
    torch.manual_seed(0)
    head = build_head(HeadConfig.for_target("shifted", tiny_target.config, block_size=3), tiny_target.model)
    save_head(head, str(tmp_path))
    head = load_head(str(tmp_path), tiny_target.model)
    assert type(head) is ShiftedDFlashHead
    tokens = random_sequence(seed=4)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    proposal = serve_one(head, feats, tokens, 20, 3)
    drafts = [tokens[20].item()] + proposal.token_ids
    assert len(proposal.token_ids) == 3 and all(a != b for a, b in zip(drafts, drafts[1:]))
