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
size threshold or split a long reduction. A `KernelChoice` removes those
causes: batches are cut into calls of at most `max_rows` rows, a call never
has fewer than `min_rows` (a single row is padded with a zero row), and a
long input dimension may be cut into pieces of at most `k_chunk` whose
partial products are added in a fixed order. `row_invariance_failures`
measures whether a choice is enough on the machine at hand instead of
assuming it.
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
# GEMMs with fewer rows take other kernels than larger ones, which sum a row
# in another order: MKL on the Intel host for one row (gemv), on AMD Zen 4
# for up to three. From this many rows on, every CPU measured so far sums a
# row alike (the invariance tests check the host at hand).
SMALL_GEMM_ROWS = 4

KERNELS = ("onednn", "dense")


@dataclass(frozen=True)
class KernelChoice:
    """A kernel, how rows are tiled for it, and the longest input piece."""

    kernel: str
    tiling: RowTiling = FREE
    k_chunk: int | None = None  # None: the whole input dimension in one product

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown linear kernel {self.kernel!r}; choose from {KERNELS}")
        if self.k_chunk is not None and self.k_chunk < 1:
            raise ValueError("k_chunk must be positive")

    def __str__(self) -> str:
        tiles = f"rows {self.tiling.min_rows}..{self.tiling.max_rows or 'any'}"
        return self.kernel + f" ({tiles}" + (f", k<={self.k_chunk})" if self.k_chunk else ")")


def onednn_available(weight: torch.Tensor) -> bool:
    """oneDNN prepacking needs a CPU float32/bfloat16 weight and mkldnn."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


class PackedLinear:
    """y = x W^T + b as the KernelChoice says, with the weight packed once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, choice: KernelChoice):
        if choice.kernel == "onednn" and not onednn_available(weight):
            raise ValueError(f"oneDNN cannot pack a {weight.dtype} weight on {weight.device}")
        self.choice, self.kernel, self.tiling = choice, choice.kernel, choice.tiling
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.bounds = _even_pieces(self.in_features, choice.k_chunk)
        self.pieces = [self._pack(weight[:, a:b]) for a, b in self.bounds]
        self.weight = self.pieces[0]

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn":
            return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        return column_major(weight) if weight.device.type == "cpu" else weight

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
        if len(self.pieces) == 1:
            return self._product(rows, self.pieces[0], self.bias)
        out = self._product(rows[:, self.bounds[0][0]:self.bounds[0][1]], self.pieces[0], None)
        for (a, b), piece in zip(self.bounds[1:], self.pieces[1:]):  # partial sums in a fixed order
            out.add_(self._product(rows[:, a:b], piece, None))
        return out if self.bias is None else out.add_(self.bias)

    def _product(self, rows, weight, bias) -> torch.Tensor:
        if self.kernel == "onednn":
            return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return F.linear(rows, weight, bias)


def _even_pieces(size: int, chunk: int | None) -> list[tuple[int, int]]:
    """[0, size) in the fewest near-equal pieces of at most `chunk`."""
    count = 1 if chunk is None else -(-size // chunk)
    edges = [size * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] as the transpose of a contiguous [in, out] (no copy if it is already)."""
    return weight if weight.t().is_contiguous() else weight.t().contiguous().t()


def probe_row_counts(max_rows: int) -> list[int]:
    """Batch sizes that cross the usual kernel thresholds, up to max_rows."""
    counts = {1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65,
              100, 127, 128, 129, 255, 256, 257, 511, 512}
    return sorted(c for c in counts if c <= max_rows)


# Elements compared per probe at least. A different summation order moves a
# float32 sum by an ulp or so; in bfloat16 the output rounding hides most of
# that, and only about one element in 10^4-10^5 shows it.
PROBE_MIN_ELEMENTS = 2_000_000
PROBE_MAX_DRAWS = 8


@torch.inference_mode()
def row_invariance_failures(linear: PackedLinear, max_rows: int, dtype: torch.dtype,
                            seed: int = 0, first_only: bool = False) -> list[int]:
    """Batch sizes (of probe_row_counts) where some row's output differs
    bitwise from computing that row alone; [] when the kernel is invariant.

    Every row of every batch is compared, over fresh random draws until
    PROBE_MIN_ELEMENTS outputs were compared. `first_only` stops at the
    first failing size.
    """
    counts = probe_row_counts(max_rows)
    per_draw = sum(counts) * linear.out_features
    draws = min(PROBE_MAX_DRAWS, -(-PROBE_MIN_ELEMENTS // per_draw))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    failures: list[int] = []
    for _ in range(draws):
        x = torch.randn(max(counts), linear.in_features, generator=gen)
        x = x.to(device=linear.weight.device, dtype=dtype)
        solo = torch.cat([linear(x[r:r + 1]) for r in range(x.shape[0])])
        for count in counts:
            if count not in failures and not torch.equal(linear(x[:count]), solo[:count]):
                failures.append(count)
                if first_only:
                    return failures
    return sorted(failures)
