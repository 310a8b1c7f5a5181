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
        preference = inference_kernels.INVARIANT_PREFERENCE[(dtype, role)]
        for kernel in kernels:
            assert kernel.choice in preference
            assert row_invariance_failures(kernel, kernel.tiling.max_rows + 1, dtype) == []
    assert model.batch_invariant and model.kernel_description.endswith("/invariant")


@pytest.mark.skipif(not onednn_available(torch.zeros(1)), reason="needs oneDNN")
@pytest.mark.parametrize("role, shape", [("head", (4096, 64)), ("layer", (64, 1536)), ("layer", (96, 64))])
def test_float32_calls_are_padded_to_four_rows_in_one_product(role, shape):
    """The faster invariant float32 choice for SmolLM2's shapes: every call
    padded to four rows, the input never cut (even wider than the single-row
    limit), still row-invariant (the probe ran on it) and still each row's
    own product."""
    weight = torch.randn(*shape)
    linear = inference_kernels.choose_kernel(weight, None, role, batch_invariant=True)
    assert (linear.kernel, linear.tiling.min_rows, len(linear.pieces)) == ("onednn", 4, 1)
    assert inference_kernels.FP32_MIN_ROWS == 4
    x = torch.randn(1, shape[1])
    torch.testing.assert_close(linear(x), x @ weight.t(), atol=1e-4, rtol=1e-4)
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
                        lambda linear, *_, **__: [] if linear.choice.kernel == "dense" else [1])
    model = load_model(model_dir).model
    assert {m.kernel.choice.kernel for m in linears(model)} == {"dense"}
    assert model.head_kernel.choice.kernel == "dense"


@pytest.mark.skipif(not onednn_available(torch.zeros(1, dtype=torch.bfloat16)), reason="needs oneDNN")
def test_a_host_invariant_only_in_narrow_tiles_gets_them_and_is_told(model_dir, monkeypatch, caplog):
    """A second AMX host kept bf16 rows invariant only up to 32: the layers
    fall back to 32-row oneDNN tiles (not to the slower dense kernel, not
    to a refusal), and the log says what that costs."""
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures",
                        lambda linear, *_, **__: [33] if (linear.tiling.max_rows or 10**9) > 32 else [])
    with caplog.at_level("WARNING", logger="specserve.kernels"):
        model = load_model(model_dir, torch.bfloat16).model
    assert {(m.kernel.choice.kernel, m.kernel.tiling.max_rows) for m in linears(model)} == {("onednn", 32)}
    assert "only up to 32 rows" in caplog.text


def test_no_invariant_kernel_refuses_to_start(model_dir, monkeypatch):
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures", lambda *_, **__: [2])
    with pytest.raises(RuntimeError, match="--no-batch-invariant"):
        load_model(model_dir)


def test_plain_linear_without_a_kernel_is_nn_linear():
    layer = inference_kernels.Linear(8, 4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
