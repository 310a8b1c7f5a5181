"""tools.step_costs: modes parse (with an optional row padding) and a padded
mode repacks every linear and the LM head as named."""
from __future__ import annotations

import pytest
import torch

from engine.models.inference_kernels import Linear
from kernels.linear import onednn_available
from tests.tiny_model import make_tiny_model_dir
from tools.step_costs import Mode, build_runner


def test_modes_parse_with_and_without_row_padding():
    assert Mode.parse("float32:invariant") == Mode("float32", True)
    assert Mode.parse("bfloat16:free:rows=4") == Mode("bfloat16", False, 4)
    assert Mode.parse("float32:invariant:rows=1").name == "float32:invariant:rows=1"
    for bad in ("float32", "float32:x", "float32:invariant:rows=0", "float32:invariant:rows=a",
                "float32:invariant:rows=2:x", "float32:invariant:cols=2", "int3:free"):
        with pytest.raises(ValueError):
            Mode.parse(bad)


@pytest.mark.skipif(not onednn_available(torch.zeros(1)), reason="needs oneDNN")
@pytest.mark.parametrize("rows", [1, 2])
def test_a_padded_mode_repacks_every_linear_and_the_head(tmp_path, rows):
    runner = build_runner(str(make_tiny_model_dir(tmp_path)), Mode("float32", True, rows))
    model = runner.model
    kernels = [m.kernel for m in model.modules() if isinstance(m, Linear)] + [model.head_kernel]
    assert {(k.kernel, k.tiling.min_rows) for k in kernels} == {("onednn", rows)}
    assert model.kernel_description.endswith(f"/onednn rows >= {rows}")
    x = torch.randn(3, model.config.hidden_size)
    torch.testing.assert_close(model.compute_logits(x), x @ model.lm_head_weight().t(), atol=1e-4, rtol=1e-4)


def test_the_command_measures_the_sizes_and_drafts_it_is_given(tmp_path, capsys):
    from tools.step_costs import main

    main(["--model", str(make_tiny_model_dir(tmp_path)), "--modes", "float32:free", "--passes", "1",
          "--sizes", "3", "--drafts", "0,5"])
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["shape", "B=3", "verify k=0", "verify k=5"] and len(rows) == 8  # CPU, then wall


def test_forks_add_a_verify_shape_per_draft_count_with_a_sequence_per_branch(tmp_path, capsys):
    from tools.step_costs import CONTEXT_TOKENS, forked_verify_batch, main

    tokens, positions, meta = forked_verify_batch(4, 2)
    assert tokens.shape[0] == 15 and meta.query_lens == [5, 5, 5]
    assert positions.tolist() == list(range(CONTEXT_TOKENS, CONTEXT_TOKENS + 5)) * 3
    tables = meta.block_tables_list
    assert len({block for table in tables for block in table}) == sum(map(len, tables))  # no block shared
    main(["--model", str(make_tiny_model_dir(tmp_path)), "--modes", "float32:free", "--passes", "1",
          "--sizes", "1", "--drafts", "0,3", "--forks", "1"])
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[:5] == ["shape", "B=1", "verify k=0", "verify k=3", "verify k=3 + 1 fork(s)"]
