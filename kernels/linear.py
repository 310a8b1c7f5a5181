"""Linear layers for inference: weights packed once, rows tiled so that a
row's result can be made independent of the batch around it.

Two CPU kernels:
- "onednn": the weight reordered once into oneDNN's blocked layout
  (`mkldnn._reorder_linear_weight`), then `mkldnn._linear_pointwise`, the
  path inductor's CPU freezing takes. With AMX or AVX512-BF16 it is the fast
  bfloat16 path (no per-call weight packing, flat cost in the row count).
- "dense": `F.linear` on a column-major weight on CPU (MKL then multiplies
  without packing it per call; a row-major float32 weight also changes
  kernels at 7-16 rows, which no tiling below hides): the float32 fast path.

A GEMM library may sum a row's products in another order when the row count
changes: one row takes a gemv kernel, and some kernels switch blocking at a
size threshold. `RowTiling` removes both: batches are cut into calls of at
most `max_rows` rows and a call never has fewer than `min_rows` (a single row
is padded with a zero row). `verify_row_invariance` measures that this is
enough on the machine at hand instead of assuming it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RowTiling:
    """How a batch of rows is cut into kernel calls."""

    min_rows: int = 1
    max_rows: int | None = None  # None: one call, whatever the row count

    def __post_init__(self) -> None:
        if self.min_rows < 1 or (self.max_rows is not None and self.max_rows < self.min_rows):
            raise ValueError(f"need 1 <= min_rows <= max_rows, got {self.min_rows}, {self.max_rows}")


# One call per batch: the fastest, and rows depend on the batch.
FREE = RowTiling()
# Decoder layers: measured row-invariant for 2..512 rows on AVX-512 (oneDNN
# bf16 and MKL float32) and for 1..256 on AMX bf16; one row takes gemv.
INVARIANT_LAYERS = RowTiling(min_rows=2, max_rows=256)
# LM head (vocabulary-wide): on AMX two elements change from 64 rows on.
INVARIANT_HEAD = RowTiling(min_rows=2, max_rows=32)

KERNELS = ("onednn", "dense")


def onednn_available(weight: torch.Tensor) -> bool:
    """oneDNN prepacking needs a CPU float32/bfloat16 weight and mkldnn."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


class PackedLinear:
    """y = x W^T + b through one kernel, with the weight packed for it once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 tiling: RowTiling = FREE):
        if kernel not in KERNELS:
            raise ValueError(f"unknown linear kernel {kernel!r}; choose from {KERNELS}")
        if kernel == "onednn" and not onednn_available(weight):
            raise ValueError(f"oneDNN cannot pack a {weight.dtype} weight on {weight.device}")
        self.kernel, self.tiling = kernel, tiling
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        if kernel == "onednn":
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        else:
            self.weight = column_major(weight) if weight.device.type == "cpu" else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        rows = x.reshape(-1, self.in_features)
        out = self._tiled(rows)
        return out.view(*x.shape[:-1], self.out_features)

    def _tiled(self, rows: torch.Tensor) -> torch.Tensor:
        count, tiling = rows.shape[0], self.tiling
        if tiling.max_rows is not None and count > tiling.max_rows:
            step = tiling.max_rows
            return torch.cat([self._tiled(rows[i:i + step]) for i in range(0, count, step)])
        if count < tiling.min_rows:
            padded = rows.new_zeros(tiling.min_rows, self.in_features)
            padded[:count] = rows
            return self._apply(padded)[:count]
        return self._apply(rows)

    def _apply(self, rows: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn":
            return torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return F.linear(rows, self.weight, self.bias)


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] as the transpose of a contiguous [in, out] (no copy if it is already)."""
    return weight if weight.t().is_contiguous() else weight.t().contiguous().t()


def probe_row_counts(max_rows: int) -> list[int]:
    """Batch sizes that cross the usual kernel thresholds, up to max_rows."""
    counts = {1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65,
              100, 127, 128, 129, 255, 256, 257, 511, 512}
    return sorted(c for c in counts if c <= max_rows)


@torch.inference_mode()
def row_invariance_failures(linear: PackedLinear, max_rows: int, dtype: torch.dtype,
                            solo_rows: int = 40, seed: int = 0) -> list[int]:
    """Batch sizes (of probe_row_counts) where some row's output differs
    bitwise from computing that row alone; [] when the kernel is invariant.

    Rows are random; the first `solo_rows` of each batch are checked (each
    solo call is a separate GEMM, so checking every row would cost a GEMM
    per row).
    """
    device = linear.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    counts = probe_row_counts(max_rows)
    x = torch.randn(max(counts), linear.in_features, generator=gen).to(device=device, dtype=dtype)
    solo = [linear(x[r:r + 1]) for r in range(min(solo_rows, x.shape[0]))]
    failures = []
    for count in counts:
        out = linear(x[:count])
        if any(not torch.equal(out[r:r + 1], solo[r]) for r in range(min(count, len(solo)))):
            failures.append(count)
    return failures
