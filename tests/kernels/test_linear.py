"""kernels.linear: packed kernels against F.linear, row tiling, and the
row-invariance probe."""
import pytest
import torch
import torch.nn.functional as F

from kernels.linear import (FREE, KernelChoice, PackedLinear, RowTiling, onednn_available, probe_row_counts,
                            row_invariance_failures)

SHAPES = [(96, 64), (200, 128), (512, 64)]  # (out, in)
TILED = RowTiling(min_rows=2, max_rows=256)


def weights(out_features, in_features, dtype, seed=0, column_major=False):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_features, in_features, generator=gen) * 0.1).to(dtype)
    b = (torch.randn(out_features, generator=gen) * 0.1).to(dtype)
    return (w.t().contiguous().t() if column_major else w), b


def kernels_here(dtype):
    return ["dense"] + (["onednn"] if onednn_available(torch.empty(1, dtype=dtype)) else [])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("tiling", [FREE, TILED, RowTiling(min_rows=2, max_rows=3)])
@pytest.mark.parametrize("k_chunk", [None, 40])
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_packed_linear_matches_f_linear(dtype, tol, tiling, k_chunk, column_major, shape):
    w, b = weights(*shape, dtype, column_major=column_major)
    x = torch.randn(7, shape[1]).to(dtype)
    expected = F.linear(x.float(), w.float(), b.float())
    for kernel in kernels_here(dtype):
        for bias in (b, None):
            got = PackedLinear(w, bias, KernelChoice(kernel, tiling, k_chunk))(x)
            assert got.shape == (7, shape[0]) and got.dtype == dtype
            want = expected if bias is not None else expected - b.float()
            torch.testing.assert_close(got.float(), want, atol=tol * 4, rtol=tol)


def test_leading_dimensions_and_single_rows_are_kept():
    w, b = weights(96, 64, torch.float32)
    linear = PackedLinear(w, b, KernelChoice("dense", TILED))
    x = torch.randn(2, 3, 64)
    assert linear(x).shape == (2, 3, 96)
    torch.testing.assert_close(linear(x[0, :1]), F.linear(x[0, :1], w, b))  # padded to two rows


def test_tiling_splits_and_pads():
    calls = []
    w, b = weights(96, 64, torch.float32)
    linear = PackedLinear(w, b, KernelChoice("dense", RowTiling(min_rows=2, max_rows=4), k_chunk=30))
    original = linear._product
    linear._product = lambda rows, *args: calls.append(tuple(rows.shape)) or original(rows, *args)
    linear(torch.randn(9, 64))
    # rows 4, 4, then the last single row padded to two; 64 inputs as 21 + 21 + 22
    assert calls == [(4, 21), (4, 21), (4, 22)] * 2 + [(2, 21), (2, 21), (2, 22)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_tiles_make_a_few_rows_like_a_batch(dtype):
    """Rows padded to four take the batch's kernel path: on the CPUs measured
    so far (Intel with AMX, where two were enough, and AMD Zen 4, where MKL
    sums up to three rows in another order) every kernel here then passes
    the probe."""
    for kernel in kernels_here(dtype):
        w, b = weights(200, 128, dtype, column_major=True)
        linear = PackedLinear(w, b, KernelChoice(kernel, RowTiling(min_rows=4, max_rows=64)))
        assert row_invariance_failures(linear, 65, dtype) == [], kernel


def test_probe_reports_a_batch_dependent_kernel():
    class RowCountDependent(PackedLinear):
        def _apply(self, rows):  # a "kernel" whose rounding depends on the row count
            return super()._apply(rows) + rows.shape[0] * 1e-3

    w, b = weights(96, 64, torch.float32)
    failures = row_invariance_failures(RowCountDependent(w, b, KernelChoice("dense")), 40, torch.float32)
    assert failures == [c for c in probe_row_counts(40) if c > 1]


def test_bad_arguments_are_refused():
    w, b = weights(96, 64, torch.float32)
    with pytest.raises(ValueError):
        KernelChoice("cublas")
    with pytest.raises(ValueError):
        KernelChoice("dense", k_chunk=0)
    with pytest.raises(ValueError):
        RowTiling(min_rows=0)
    with pytest.raises(ValueError):
        RowTiling(min_rows=4, max_rows=2)
    with pytest.raises(ValueError):
        PackedLinear(w.double(), b.double(), KernelChoice("onednn"))
