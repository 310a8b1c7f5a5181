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
    fixed = trainer._sample_step_blocks()
    trainer._sample_step_blocks = lambda: fixed
    first = trainer.train_step()["ce"]
    for _ in range(30):
        last = trainer.train_step()["ce"]
    assert last < 0.7 * first, (first, last)


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
