"""engine.models.inference_kernels: which kernel each linear gets, the probe
that guards batch invariance, and switching modes."""
import pytest
import torch

from engine.models import inference_kernels
from engine.models.loader import load_model
from kernels.linear import FREE, INVARIANT_HEAD, INVARIANT_LAYERS, onednn_available
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("kernels"), tie_word_embeddings=False)


def linears(model):
    return [m for m in model.modules() if isinstance(m, inference_kernels.Linear)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_installs_preferred_invariant_kernels(model_dir, dtype):
    model = load_model(model_dir, dtype).model
    layer_pref, head_pref = (inference_kernels.PREFERENCE[(dtype, role)][0] for role in ("layer", "head"))
    onednn = onednn_available(torch.empty(1, dtype=dtype))
    for m in linears(model):
        assert m.kernel.kernel == (layer_pref if onednn else "dense")
        assert m.kernel.tiling == INVARIANT_LAYERS
    assert model.head_kernel.tiling == INVARIANT_HEAD
    assert model.head_kernel.kernel == (head_pref if onednn else "dense")


def test_switching_modes_changes_tiling_not_results_much(model_dir):
    model = load_model(model_dir).model
    x = torch.randn(5, model.config.hidden_size)
    invariant = model.compute_logits(x)
    model.use_inference_kernels(batch_invariant=False)
    assert all(m.kernel.tiling == FREE for m in linears(model)) and not model.batch_invariant
    torch.testing.assert_close(model.compute_logits(x), invariant, atol=1e-5, rtol=1e-5)


def test_a_failing_probe_moves_to_the_next_kernel(model_dir, monkeypatch):
    if not onednn_available(torch.empty(1)):
        pytest.skip("needs oneDNN for a second kernel")
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures",
                        lambda linear, *_: [7] if linear.kernel == "dense" else [])
    model = load_model(model_dir).model
    assert {m.kernel.kernel for m in linears(model)} == {"onednn"}


def test_no_invariant_kernel_refuses_to_start(model_dir, monkeypatch):
    monkeypatch.setattr(inference_kernels, "_PROBED", {})
    monkeypatch.setattr(inference_kernels, "row_invariance_failures", lambda *_: [2])
    with pytest.raises(RuntimeError, match="--no-batch-invariant"):
        load_model(model_dir)


def test_plain_linear_without_a_kernel_is_nn_linear():
    layer = inference_kernels.Linear(8, 4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
