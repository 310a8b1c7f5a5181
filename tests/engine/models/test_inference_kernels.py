"""engine.models.inference_kernels: which kernel each linear gets, the probe
that guards batch invariance, and switching modes."""
import pytest
import torch

from engine.models import inference_kernels
from engine.models.loader import load_model
from kernels.linear import FREE, onednn_available, row_invariance_failures
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("kernels"), tie_word_embeddings=False)


def linears(model):
    return [m for m in model.modules() if isinstance(m, inference_kernels.Linear)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_installs_probed_invariant_kernels(model_dir, dtype):
    model = load_model(model_dir, dtype).model
    for role, kernels in (("layer", [m.kernel for m in linears(model)]), ("head", [model.head_kernel])):
        for kernel in kernels:
            assert kernel.choice in inference_kernels.invariant_preference(dtype, role, kernel.in_features)
            assert row_invariance_failures(kernel, kernel.tiling.max_rows + 1, dtype) == []
    assert model.batch_invariant and model.kernel_description.endswith("/invariant")


@pytest.mark.skipif(not onednn_available(torch.zeros(1)), reason="needs oneDNN")
def test_float32_head_is_padded_to_four_rows_and_a_wide_layer_to_two_unchunked():
    """The cheaper invariant choices for SmolLM2's shapes: the LM head padded
    to four rows, a layer wider than the chunk limit padded to two rows in
    one product, both still row-invariant (the probe ran on them)."""
    vocabulary = torch.randn(4096, 64)
    head = inference_kernels.choose_kernel(vocabulary, None, "head", batch_invariant=True)
    assert head.tiling.min_rows == inference_kernels.FP32_HEAD_MIN_ROWS == 4
    wide = inference_kernels.choose_kernel(torch.randn(64, 1536), None, "layer", batch_invariant=True)
    assert (wide.kernel, wide.tiling.min_rows, len(wide.pieces)) == ("onednn", 2, 1)
    narrow = inference_kernels.choose_kernel(torch.randn(64, 576), None, "layer", batch_invariant=True)
    assert narrow.tiling.min_rows == 1
    x = torch.randn(1, 64)  # one row padded to four: still that row's product
    torch.testing.assert_close(head(x), x @ vocabulary.t(), atol=1e-4, rtol=1e-4)
    for linear in (head, wide):
        assert row_invariance_failures(linear, linear.tiling.max_rows + 1, torch.float32) == []


def test_switching_modes_changes_tiling_not_results_much(model_dir):
    model = load_model(model_dir).model
    x = torch.randn(5, model.config.hidden_size)
    invariant = model.compute_logits(x)
    model.use_inference_kernels(batch_invariant=False)
    assert all(m.kernel.tiling == FREE for m in linears(model)) and not model.batch_invariant
    torch.testing.assert_close(model.compute_logits(x), invariant, atol=1e-5, rtol=1e-5)


def test_a_failing_probe_moves_to_the_next_choice(model_dir, monkeypatch):
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures",
                        lambda linear, *_, **__: [] if linear.choice.tiling.min_rows == 2 else [1])
    model = load_model(model_dir).model
    assert {m.kernel.tiling.min_rows for m in linears(model)} == {2}


def test_no_invariant_kernel_refuses_to_start(model_dir, monkeypatch):
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures", lambda *_, **__: [2])
    with pytest.raises(RuntimeError, match="--no-batch-invariant"):
        load_model(model_dir)


def test_plain_linear_without_a_kernel_is_nn_linear():
    layer = inference_kernels.Linear(8, 4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
