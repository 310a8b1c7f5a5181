"""How fast the teacher-forced pass extracts training features, per target
dtype and kernel mode, side by side in one run.

The training data's cost is this pass (prefill.teacher_forced_states) over
every conversation: float32 is what the first heads were trained on,
bfloat16 is the target as served, and the bfloat16 kernels come
batch-invariant (what the engine serves with) or batch-free (what
features.collect_features runs, since features are never served).

    python -m tools.feature_pass_speed --out bench/results/DATE-feature-pass
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGURATIONS = (("float32", True), ("bfloat16", True), ("bfloat16", False))
TOP_K = 20


def tokens_per_second(model, sequences: list[list[int]], repeats: int) -> float:
    from engine.spec.training.prefill import teacher_forced_states

    layers = len(model.model.layers)
    aux = (0, layers // 2, layers - 1)  # low, middle, high, as the heads read (any three cost the same)
    teacher_forced_states(model, sequences[:1], aux, TOP_K)  # warm-up: packing, first allocations
    started = time.perf_counter()
    for _ in range(repeats):
        teacher_forced_states(model, sequences, aux, TOP_K)
    return repeats * sum(map(len, sequences)) / (time.perf_counter() - started)


def measure(path: str | None, lengths: list[int], repeats: int, seed: int) -> list[dict]:
    import torch

    from engine.models.loader import load_model

    rows = []
    for dtype_name, invariant in CONFIGURATIONS:
        loaded = load_model(path, dtype=getattr(torch, dtype_name))
        loaded.model.use_inference_kernels(batch_invariant=invariant)
        generator = torch.Generator().manual_seed(seed)
        vocab = loaded.config.vocab_size
        sequences = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
        rows.append({"dtype": dtype_name, "kernels": "batch-invariant" if invariant else "batch-free",
                     "tokens_per_second": round(tokens_per_second(loaded.model, sequences, repeats), 1)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="target (default: the embedded default model)")
    parser.add_argument("--lengths", default="700,400,600,300", help="token counts of the packed batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for result.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = measure(args.model, [int(n) for n in args.lengths.split(",")], args.repeats, args.seed)
    for row in rows:
        print(f"{row['dtype']:9s} {row['kernels']:16s} {row['tokens_per_second']:8.1f} tok/s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
