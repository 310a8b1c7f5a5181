"""The training loop: the loss falls for every head family, and resume is exact."""
from __future__ import annotations

import os

import pytest
import torch

from engine.spec.heads.registry import HEAD_METHODS
from tests.engine.spec.conftest import make_trainer

BLOCK = 4


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_training_loss_falls(tiny_target, feature_set, method):
    """On fresh random batches the loss falls; on one fixed batch the head
    can fit it (gradients reach every part that matters)."""
    trainer = make_trainer(tiny_target, feature_set, method, BLOCK, steps=200)  # lr stays high throughout
    steps = [trainer.train_step() for _ in range(40)]

    def mean(key, part):
        return sum(step[key] for step in part) / len(part)

    # A random tiny target is nearly unpredictable: only a modest fall on new data.
    assert mean("loss", steps[-5:]) < 0.97 * mean("loss", steps[:5])
    assert mean("top1", steps[-5:]) > mean("top1", steps[:5])
    first, last = fit_one_batch(trainer, 30)
    assert last["ce"] < 0.7 * first["ce"], (first, last)


def fit_one_batch(trainer, steps: int) -> tuple[dict, dict]:
    """Train on one fixed batch: (metrics of the first step, of the last)."""
    fixed = trainer._sample_step_blocks()
    trainer._sample_step_blocks = lambda: fixed
    first = trainer.train_step()
    for _ in range(steps):
        last = trainer.train_step()
    return first, last


def test_training_resumes_exactly(tiny_target, feature_set, tmp_path):
    straight = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=20)
    straight.run()
    interrupted = make_trainer(tiny_target, feature_set, "dspark", BLOCK, str(tmp_path), steps=20)
    for _ in range(10):
        interrupted.train_step()
    interrupted.save()  # as a periodic checkpoint would, then the process dies
    assert os.path.exists(tmp_path / "train_state.pt") and os.path.exists(tmp_path / "model.safetensors")
    resumed = make_trainer(tiny_target, feature_set, "dspark", BLOCK, str(tmp_path), steps=20, seed=0)
    resumed.run()
    assert resumed.step == 20
    for name, tensor in straight.head.state_dict().items():
        torch.testing.assert_close(resumed.head.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_stop_at_step_is_the_first_part_of_the_full_run(tiny_target, feature_set):
    """An ablation stopped early follows the whole budget's learning-rate
    schedule: its weights equal a full run's after as many steps."""
    from dataclasses import replace

    stopped = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=20)
    stopped.config = replace(stopped.config, stop_at_step=8)
    stopped.run()
    assert stopped.step == 8
    full = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=20)
    for _ in range(8):
        full.train_step()
    for name, tensor in full.head.state_dict().items():
        torch.testing.assert_close(stopped.head.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    short = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=8)
    assert short.learning_rate(6) < full.learning_rate(6)  # a short budget's schedule decays sooner


def test_bf16_autocast_step_lowers_the_loss(tiny_target, feature_set):
    """bfloat16 autocast (what the AMX path runs) on the device path the
    CUDA runs take, here with device='cpu': float32 master weights, the
    loss falls on a fixed batch."""
    from dataclasses import replace

    trainer = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=200)
    trainer.config = replace(trainer.config, precision="bf16", device="cpu")
    first, last = fit_one_batch(trainer, 25)
    assert last["loss"] < 0.8 * first["loss"], (first, last)
    assert all(p.dtype == torch.float32 for p in trainer.head.parameters())


def test_training_with_a_draft_vocabulary(tiny_target, feature_set):
    from engine.spec.heads.config import HeadConfig
    from engine.spec.training.recipes import build_head
    from engine.spec.training.vocab import draft_vocabulary, target_choice_counts
    from tests.engine.spec.conftest import split

    train, _ = split(feature_set)
    ids = draft_vocabulary(target_choice_counts(train, tiny_target.config.vocab_size), 128)
    trainer = make_trainer(tiny_target, feature_set, "eagle3", BLOCK, steps=200)
    head = build_head(HeadConfig.for_target("eagle3", tiny_target.config, block_size=BLOCK, draft_vocab_size=128),
                      tiny_target.model)
    head.set_draft_vocab(ids)
    trainer.head = head
    trainer.optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    first, last = fit_one_batch(trainer, 25)
    assert last["ce"] < 0.8 * first["ce"] and 0.5 < last["covered"] <= 1.0


def test_a_state_saved_by_the_unfused_update_resumes_fused(tiny_target, feature_set, tmp_path):
    """Runs started before the fused AdamW update resume with it: the
    checkpoint's optimizer state loads, the update's implementation stays
    this run's."""
    old = make_trainer(tiny_target, feature_set, "dspark", BLOCK, str(tmp_path), steps=20)
    old.optimizer = torch.optim.AdamW(old.optimizer.param_groups[0]["params"], lr=old.config.lr,
                                      weight_decay=old.config.weight_decay)
    old.train_step()
    old.save()
    resumed = make_trainer(tiny_target, feature_set, "dspark", BLOCK, str(tmp_path), steps=20)
    assert resumed.resume() and resumed.step == 1
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    resumed.train_step()
