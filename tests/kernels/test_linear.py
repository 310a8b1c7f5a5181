"""kernels.linear: packed kernels against F.linear, row tiling, and the
row-invariance probe."""
import pytest
import torch
import torch.nn.functional as F

from kernels.linear import (FREE, INVARIANT_HEAD, INVARIANT_LAYERS, PackedLinear, RowTiling,
                            onednn_available, probe_row_counts, row_invariance_failures)

SHAPES = [(96, 64), (200, 128), (512, 64)]  # (out, in)


def weights(out_features, in_features, dtype, seed=0, column_major=False):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_features, in_features, generator=gen) * 0.1).to(dtype)
    b = (torch.randn(out_features, generator=gen) * 0.1).to(dtype)
    return (w.t().contiguous().t() if column_major else w), b


def kernels_here(dtype):
    return ["dense"] + (["onednn"] if onednn_available(torch.empty(1, dtype=dtype)) else [])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("tiling", [FREE, INVARIANT_LAYERS, RowTiling(min_rows=2, max_rows=3)])
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_packed_linear_matches_f_linear(dtype, tol, tiling, column_major, shape):
    w, b = weights(*shape, dtype, column_major=column_major)
    x = torch.randn(7, shape[1]).to(dtype)
    expected = F.linear(x.float(), w.float(), b.float())
    for kernel in kernels_here(dtype):
        for bias in (b, None):
            got = PackedLinear(w, bias, kernel, tiling)(x)
            assert got.shape == (7, shape[0]) and got.dtype == dtype
            want = expected if bias is not None else expected - b.float()
            torch.testing.assert_close(got.float(), want, atol=tol * 4, rtol=tol)


def test_leading_dimensions_and_single_rows_are_kept():
    w, b = weights(96, 64, torch.float32)
    linear = PackedLinear(w, b, "dense", INVARIANT_LAYERS)
    x = torch.randn(2, 3, 64)
    assert linear(x).shape == (2, 3, 96)
    torch.testing.assert_close(linear(x[0, :1]), F.linear(x[0, :1], w, b))  # padded to two rows


def test_tiling_splits_and_pads():
    calls = []
    w, b = weights(96, 64, torch.float32)
    linear = PackedLinear(w, b, "dense", RowTiling(min_rows=2, max_rows=4))
    original = linear._apply
    linear._apply = lambda rows: calls.append(rows.shape[0]) or original(rows)
    linear(torch.randn(9, 64))
    assert calls == [4, 4, 2]  # the last single row padded to two


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_invariant_tilings_are_row_invariant_here(dtype):
    """What install_inference_kernels relies on: with the invariant tilings
    each kernel's rows do not depend on the batch (probe up to one split)."""
    for kernel in kernels_here(dtype):
        for tiling, shape in ((INVARIANT_LAYERS, (200, 128)), (INVARIANT_HEAD, (512, 64))):
            w, b = weights(*shape, dtype)
            failures = row_invariance_failures(PackedLinear(w, b, kernel, tiling), tiling.max_rows + 1, dtype)
            assert failures == [], f"{kernel} {dtype} not invariant at {failures}"


def test_probe_reports_a_batch_dependent_kernel():
    class RowCountDependent(PackedLinear):
        def _apply(self, rows):  # a "kernel" whose rounding depends on the row count
            return super()._apply(rows) + rows.shape[0] * 1e-3

    w, b = weights(96, 64, torch.float32)
    failures = row_invariance_failures(RowCountDependent(w, b, "dense", FREE), 40, torch.float32)
    assert failures == [c for c in probe_row_counts(40) if c > 1]


def test_bad_arguments_are_refused():
    w, b = weights(96, 64, torch.float32)
    with pytest.raises(ValueError):
        PackedLinear(w, b, "cublas")
    with pytest.raises(ValueError):
        RowTiling(min_rows=0)
    with pytest.raises(ValueError):
        RowTiling(min_rows=4, max_rows=2)
    with pytest.raises(ValueError):
        PackedLinear(w.double(), b.double(), "onednn")
