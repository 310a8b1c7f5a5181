"""tools.feature_pass_speed on a tiny target: every dtype and kernel mode
timed in one run, and the model's kernels set as each row says."""
from __future__ import annotations

import json

from tools import feature_pass_speed


def test_each_configuration_is_timed_with_its_own_kernels(tmp_path, tiny_dir, monkeypatch, capsys):
    seen = []
    real = feature_pass_speed.tokens_per_second

    def recording(model, sequences, repeats):
        seen.append((next(model.parameters()).dtype, model.batch_invariant))
        return real(model, sequences, repeats)

    monkeypatch.setattr(feature_pass_speed, "tokens_per_second", recording)
    assert feature_pass_speed.main(["--model", str(tiny_dir), "--lengths", "20,12", "--repeats", "1",
                                    "--out", str(tmp_path)]) == 0
    import torch

    assert seen == [(torch.float32, True), (torch.bfloat16, True), (torch.bfloat16, False)]
    rows = json.loads((tmp_path / "result.json").read_text())["rows"]
    assert [(r["dtype"], r["kernels"]) for r in rows] == [
        ("float32", "batch-invariant"), ("bfloat16", "batch-invariant"), ("bfloat16", "batch-free")]
    assert all(r["tokens_per_second"] > 0 for r in rows)
    assert capsys.readouterr().out.count("tok/s") == 3
