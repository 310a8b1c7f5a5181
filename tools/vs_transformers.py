"""Our engine (speculation off) against transformers' greedy `generate` on
the same weights, single stream and 8 streams, interleaved in one run.

    python -m tools.vs_transformers --threads 1 --max-tokens 128 --rounds 3

Both read the converted copy of the default GGUF (HF layout), so the
weights are identical; both decode greedily with the stop token ignored, so
both produce exactly `max_tokens` tokens per stream.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bench.datasets import load_prompts
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import LLMEngine
from engine.models.loader import load_model
from scheduler.request import SamplingParams


def ours(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    return sum(map(len, outs)) / (time.perf_counter() - start)


def theirs(model, tokenizer, prompts: list[list[int]], max_tokens: int) -> float:
    """HF generate, batch = len(prompts), left padding."""
    width = max(map(len, prompts))
    pad = tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
    seconds = time.perf_counter() - start
    return (out.shape[1] - width) * len(prompts) / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    loaded = load_model(None, torch.float32, "cpu")
    engine = LLMEngine(EngineConfig(model=loaded.path, cache=CacheConfig(num_blocks=1024),
                                    scheduler=SchedulerConfig(max_num_seqs=args.streams,
                                                              max_num_batched_tokens=512)), loaded=loaded)
    hf = AutoModelForCausalLM.from_pretrained(loaded.path, torch_dtype=torch.float32).eval()
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(list(p.messages)))
               for p in load_prompts("chat", args.streams, seed=0)]
    figures = {"ours_1": [], "hf_1": [], f"ours_{args.streams}": [], f"hf_{args.streams}": []}
    for _ in range(args.rounds):
        figures["ours_1"].append(ours(engine, prompts[:1], args.max_tokens))
        figures["hf_1"].append(theirs(hf, tok, prompts[:1], args.max_tokens))
        figures[f"ours_{args.streams}"].append(ours(engine, prompts, args.max_tokens))
        figures[f"hf_{args.streams}"].append(theirs(hf, tok, prompts, args.max_tokens))
    best = {k: max(v) for k, v in figures.items()}
    n = args.streams
    table = "\n".join([
        "| streams | specserve tok/s | transformers tok/s | ratio |", "|---|---|---|---|",
        f"| 1 | {best['ours_1']:.1f} | {best['hf_1']:.1f} | {best['ours_1'] / best['hf_1']:.2f}x |",
        f"| {n} (aggregate) | {best[f'ours_{n}']:.1f} | {best[f'hf_{n}']:.1f} | "
        f"{best[f'ours_{n}'] / best[f'hf_{n}']:.2f}x |"])
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"vs-transformers-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump({"args": vars(args), "figures": figures, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
