"""tools.train_step_speed on a tiny target: it times the steps it says it
times, and a --head run starts from that checkpoint's weights."""
from __future__ import annotations

import json

import torch

from engine.spec.heads.checkpoint import save_head
from tests.engine.spec.conftest import make_head
from tools import train_step_speed


def test_times_warmup_then_the_stated_steps(tiny_dir, feature_set, feature_dir, monkeypatch, capsys):
    from engine.spec.training.train import Trainer

    calls = []
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: calls.append(self.step) or real(self))
    assert train_step_speed.main(["--target", str(tiny_dir), "--dtype", "float32", "--features", feature_dir,
                                  "--steps", "3", "--warmup", "2", "--anchors", "4", "--precision", "fp32"]) == 0
    assert calls == [0, 1, 2, 3, 4]
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and result["seconds_per_step"] > 0 and result["anchors_per_second"] > 0


def test_a_head_checkpoint_is_the_start(tiny_dir, tiny_target, feature_set, feature_dir, tmp_path):
    head = make_head("dspark", tiny_target, 4, seed=3)
    save_head(head, str(tmp_path), dtype=torch.float32)
    trainer = train_step_speed.build_trainer(str(tiny_dir), "float32", str(tmp_path), "dspark", [feature_dir],
                                             2, 4, "fp32", 0)
    for name, tensor in head.state_dict().items():
        assert torch.equal(trainer.head.state_dict()[name], tensor), name
