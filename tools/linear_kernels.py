"""Linear kernels on SmolLM2's shapes: cost by row count, and whether a row's
result depends on the batch (the probe engine/models/inference_kernels.py
runs at load time).

    python -m tools.linear_kernels
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from kernels.linear import KernelChoice, PackedLinear, RowTiling, onednn_available, row_invariance_failures

# SmolLM2-135M: fused qkv, o, fused gate/up, down; 30 layers; tied LM head.
LAYER_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))
HEAD_SHAPE = (49152, 576)
NUM_LAYERS = 30
ROWS = (1, 2, 4, 8, 16, 32, 64)


def choices(dtype: torch.dtype) -> dict[str, KernelChoice]:
    out = {"dense": KernelChoice("dense")}
    if onednn_available(torch.empty(1, dtype=dtype)):
        out["onednn"] = KernelChoice("onednn")
        if dtype == torch.float32:
            out["onednn k<=1024"] = KernelChoice("onednn", k_chunk=1024)
    return out


def cpu_ms(fn, repeats: int = 5) -> float:
    """Best thread CPU time of `fn` in ms (one thread: not inflated by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best * 1000


@torch.inference_mode()
def layer_costs(dtype: torch.dtype, choice: KernelChoice) -> list[float]:
    """ms for all linears of one forward (30 layers), per row count."""
    linears = [PackedLinear(torch.randn(o, i).to(dtype), None, choice) for o, i in LAYER_SHAPES]
    out = []
    for rows in ROWS:
        xs = [torch.randn(rows, i).to(dtype) for _, i in LAYER_SHAPES]
        out.append(cpu_ms(lambda: [lin(x) for _ in range(NUM_LAYERS) for lin, x in zip(linears, xs)]))
    return out


def invariance(dtype: torch.dtype, choice: KernelChoice, shape, max_rows: int) -> str:
    """First failing row count with single rows unpadded / padded to two."""
    cells = []
    for min_rows in (1, 2):
        tiled = KernelChoice(choice.kernel, RowTiling(min_rows, max_rows), choice.k_chunk)
        failures = row_invariance_failures(PackedLinear(torch.randn(*shape).to(dtype) * 0.05, None, tiled),
                                           max_rows + 1, dtype, first_only=True)
        cells.append("ok" if not failures else f"fails at {failures[0]}")
    return " / ".join(cells)


def run(log=print) -> str:
    torch.set_num_threads(1)
    lines = ["| dtype | kernel | " + " | ".join(f"M={m} ms" for m in ROWS) + " |",
             "|---|---|" + "---|" * len(ROWS)]
    probe = ["| dtype | kernel | " + " | ".join(f"{o}x{i}" for o, i in LAYER_SHAPES + (HEAD_SHAPE,)) + " |",
             "|---|---|" + "---|" * (len(LAYER_SHAPES) + 1)]
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        for label, choice in choices(dtype).items():
            costs = layer_costs(dtype, choice)
            lines.append(f"| {name} | {label} | " + " | ".join(f"{c:.1f}" for c in costs) + " |")
            cells = [invariance(dtype, choice, s, 256) for s in LAYER_SHAPES] + [
                invariance(dtype, choice, HEAD_SHAPE, 32)]
            probe.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
            log(lines[-1])
    return ("All linears of one SmolLM2 forward, thread CPU ms, best of 5\n\n" + "\n".join(lines) +
            "\n\nRow invariance up to 257 rows (LM head: 33), single rows unpadded / padded to two\n\n" +
            "\n".join(probe))


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m tools.linear_kernels", description=__doc__.splitlines()[0]).parse_args(argv)
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
