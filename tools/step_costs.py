"""Cost of one target forward by batch shape, for several dtype/kernel modes
measured side by side in one process.

Two shapes: the start-up profiler's decode-shaped batches (B requests, one
query token each, or B tokens spread over at most 32 requests, each behind
128 tokens of context) give SPS(B); one request verifying k drafts (1 + k
query tokens) gives the cost of verification against a one-token step.
Modes and sizes are visited round-robin for several passes and the best time
of each is kept, so a burst of load from other processes hits every mode of
a pass alike. With one torch thread the forward runs on the calling thread,
so its CPU time (`time.thread_time`) does not count the time other processes
held the core: that is the figure reported; wall time is kept beside it
(on a busy shared machine it can be twice the CPU time).

    python -m tools.step_costs --modes float32:free,bfloat16:invariant --passes 5
    python -m tools.step_costs --modes float32:invariant:rows=1,float32:invariant:rows=2,float32:invariant
    python -m tools.step_costs --modes bfloat16:invariant --sizes 1 --drafts 0,8,16 --forks 1
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from engine.device import DTYPES
from engine.model_runner import ModelRunner
from engine.models.inference_kernels import HEAD_ROWS, LAYER_ROWS, ONEDNN_FP32_K_CHUNK, Linear
from engine.models.loader import load_model
from engine.profiler import CONTEXT_TOKENS, decode_shaped_batch
from kernels.attention import AttentionMetadata
from kernels.linear import KernelChoice, PackedLinear, RowTiling

DEFAULT_MODES = ("float32:free", "float32:invariant", "bfloat16:invariant", "bfloat16:free")
DECODE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
VERIFY_DRAFTS = (0, 2, 4, 8)
MAX_SEQS = 32
BLOCK_SIZE = 16
NUM_BLOCKS = 512


@dataclass(frozen=True)
class Mode:
    """A dtype, whether the kernels are batch-invariant and, optionally, the
    fewest rows every oneDNN call is padded to (`float32:invariant:rows=1`:
    what the preference in engine/models/inference_kernels.py would cost
    with another padding)."""

    dtype: str
    batch_invariant: bool
    min_rows: int | None = None

    @property
    def name(self) -> str:
        rows = f":rows={self.min_rows}" if self.min_rows else ""
        return f"{self.dtype}:{'invariant' if self.batch_invariant else 'free'}{rows}"

    @staticmethod
    def parse(text: str) -> "Mode":
        parts = text.split(":")
        dtype, kind = (parts + [""])[:2]
        rows = parts[2].removeprefix("rows=") if len(parts) == 3 and parts[2].startswith("rows=") else None
        if (dtype not in DTYPES or kind not in ("invariant", "free") or len(parts) > 3
                or (len(parts) == 3 and not (rows and rows.isdigit() and int(rows) >= 1))):
            raise ValueError(f"mode {text!r}: want DTYPE:invariant or DTYPE:free, optionally :rows=N")
        return Mode(dtype, kind == "invariant", int(rows) if rows else None)


def build_runner(model: str | None, mode: Mode) -> ModelRunner:
    loaded = load_model(model, DTYPES[mode.dtype], "cpu")
    loaded.model.use_inference_kernels(mode.batch_invariant)
    if mode.min_rows:
        repack_padded(loaded.model, mode.min_rows)
    return ModelRunner(loaded.model, loaded.config, NUM_BLOCKS, BLOCK_SIZE, DTYPES[mode.dtype], "cpu")


def repack_padded(model, min_rows: int) -> None:
    """Every linear and the LM head through oneDNN with calls padded to
    `min_rows` rows (a float32 single row with its input cut at
    ONEDNN_FP32_K_CHUNK, as row invariance needs there)."""
    def packed(weight, bias, role_rows):
        cut = ONEDNN_FP32_K_CHUNK if (min_rows == 1 and weight.dtype == torch.float32) else None
        return PackedLinear(weight, bias, KernelChoice("onednn", RowTiling(min_rows, role_rows), cut))

    for linear in (m for m in model.modules() if isinstance(m, Linear)):
        linear.kernel = packed(linear.weight.data, None if linear.bias is None else linear.bias.data, LAYER_ROWS)
    model.head_kernel = packed(model.lm_head_weight(), None, HEAD_ROWS)
    model.kernel_description += f"/onednn rows >= {min_rows}"


def verify_shaped_batch(num_drafts: int, device="cpu"):
    """One request: its last real token plus `num_drafts` drafts, behind
    CONTEXT_TOKENS of context."""
    return forked_verify_batch(num_drafts, 0, device)


def forked_verify_batch(num_drafts: int, num_forks: int, device="cpu"):
    """One request verifying `num_drafts` drafts and `num_forks` alternative
    branches of as many, each a sequence of its own over the same context
    (how engine/spec/tree.py computes a token tree)."""
    query = 1 + num_drafts
    seq = CONTEXT_TOKENS + query
    blocks = -(-seq // BLOCK_SIZE)
    sequences = 1 + num_forks
    tables = [list(range(i * blocks, (i + 1) * blocks)) for i in range(sequences)]
    meta = AttentionMetadata.build([query] * sequences, [seq] * sequences, tables, BLOCK_SIZE, device)
    positions = torch.arange(seq - query, seq, device=device).repeat(sequences)
    return torch.zeros(query * sequences, dtype=torch.long, device=device), positions, meta


def shapes(sizes: Sequence[int], drafts: Sequence[int], forks: int = 0) -> dict[str, tuple]:
    """label -> (tokens, positions, meta)."""
    out = {f"B={b}": decode_shaped_batch(b, MAX_SEQS, BLOCK_SIZE, NUM_BLOCKS, "cpu") for b in sizes}
    out.update({f"verify k={k}": verify_shaped_batch(k) for k in drafts})
    if forks:
        out.update({f"verify k={k} + {forks} fork(s)": forked_verify_batch(k, forks) for k in drafts if k})
    return out


def cpu_and_wall_seconds(runner, tokens, positions, meta) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of one forward plus logits for every row."""
    cpu, wall = time.thread_time(), time.perf_counter()
    hidden, _ = runner.model(tokens, positions, runner.kv_caches, meta)
    runner.model.compute_logits(hidden)
    return time.thread_time() - cpu, time.perf_counter() - wall


@torch.inference_mode()
def measure(runners: dict[str, ModelRunner], batches: dict[str, tuple], passes: int,
            log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """(cpu, wall): mode -> shape -> best seconds over `passes` round-robin passes."""
    cpu = {name: {} for name in runners}
    wall = {name: {} for name in runners}
    for runner in runners.values():  # first touch: allocations, oneDNN primitive caches
        for batch in batches.values():
            cpu_and_wall_seconds(runner, *batch)
    for p in range(passes):
        started = time.perf_counter()
        for label, batch in batches.items():
            for name, runner in runners.items():
                c, w = cpu_and_wall_seconds(runner, *batch)
                cpu[name][label] = min(cpu[name].get(label, float("inf")), c)
                wall[name][label] = min(wall[name].get(label, float("inf")), w)
        log(f"pass {p + 1}/{passes}: {time.perf_counter() - started:.1f} s")
    return cpu, wall


def table_markdown(best: dict[str, dict[str, float]]) -> str:
    """Rows: shapes; columns: ms per mode, and each verify row over its mode's k=0."""
    names = list(best)
    labels = list(next(iter(best.values())))
    lines = ["| shape | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        cells = []
        for n in names:
            ms = best[n][label] * 1000
            ratio = ""
            if label.startswith("verify") and "verify k=0" in best[n]:
                ratio = f" ({best[n][label] / best[n]['verify k=0']:.2f}x)"
            cells.append(f"{ms:.1f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(model: str | None, modes: Sequence[Mode], passes: int, sizes=DECODE_SIZES, drafts=VERIFY_DRAFTS,
        log: Callable[[str], None] = print, forks: int = 0) -> dict:
    if torch.get_num_threads() != 1:
        log(f"warning: {torch.get_num_threads()} torch threads (the figures in bench/results use 1)")
    runners = {}
    for mode in modes:
        log(f"loading {mode.name}")
        runners[mode.name] = build_runner(model, mode)
    kernels = {name: r.model.kernel_description for name, r in runners.items()}
    cpu, wall = measure(runners, shapes(sizes, drafts, forks), passes, log)
    return {"threads": torch.get_num_threads(), "passes": passes, "kernels": kernels,
            "cpu_seconds": cpu, "wall_seconds": wall,
            "table": table_markdown(cpu), "wall_table": table_markdown(wall)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.step_costs", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the bundled SmolLM2")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES))
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--sizes", default=",".join(map(str, DECODE_SIZES)), help="decode-shaped batch sizes B")
    p.add_argument("--drafts", default=",".join(map(str, VERIFY_DRAFTS)), help="drafts k of the verify shapes")
    p.add_argument("--forks", type=int, default=0,
                   help="also each verify shape with this many alternative branches as forks (token trees)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.model, [Mode.parse(m) for m in args.modes.split(",")], args.passes,
                 sizes=_counts(args.sizes), drafts=_counts(args.drafts), forks=args.forks)
    print("thread CPU time\n" + result["table"] + "\n\nwall time\n" + result["wall_table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


if __name__ == "__main__":
    raise SystemExit(main())
