"""Where a one-stream engine step's time goes, per speculative method: the
target forward, scheduling, drafting, the output update, the rest; and
tokens per step, so that a method's speed reads as tokens per step over
its step time against `off`'s.

    OMP_NUM_THREADS=1 python -m tools.step_anatomy humaneval off,ngram,ngram-ds --prompts 8
    OMP_NUM_THREADS=1 python -m tools.step_anatomy mt-bench off,ngram-ds --prompts 64 --streams 32

Methods are tools.engine_ab's. `--streams` requests at a time (default
one), greedy, after a warm-up; a diagnostic, not a benchmark (no
interleaved rounds).
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

from bench.datasets import DATASETS
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from scheduler.request import SamplingParams
from tools.engine_ab import HEAD, build_engines, dataset_prompt_ids, run_streams, speculative_configs
from tools.engine_ab_ablations import ABLATIONS

# engine attribute path -> the part of the step it is
PARTS = {("scheduler", "schedule"): "schedule", ("", "_execute"): "forward",
         ("scheduler", "update_from_output"): "update", ("", "_draft"): "draft", ("", "_emit"): "emit"}


def timed_parts(engine: LLMEngine) -> collections.Counter:
    """Wrap the step's parts so each call adds its seconds to the counter returned."""
    seconds: collections.Counter = collections.Counter()
    for (owner_name, method), part in PARTS.items():
        owner = getattr(engine, owner_name) if owner_name else engine
        setattr(owner, method, _timed(getattr(owner, method), seconds, part))
    return seconds


def _timed(function, seconds: collections.Counter, part: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[part] += time.perf_counter() - started
    return wrapper


def anatomy(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, streams: int = 1) -> dict:
    """Per step: milliseconds of each part and of the whole, and tokens;
    `streams` requests in flight, each stream sending its next prompt when
    its last answer is done (tools.engine_ab.StreamDriver)."""
    engine.generate(prompts[:1], params)  # warm-up
    seconds = timed_parts(engine)
    before = engine.snapshot_stats()
    started = time.perf_counter()
    tokens = run_streams(engine, prompts, streams, params).tokens
    total = time.perf_counter() - started
    after = engine.snapshot_stats()
    steps = after.num_steps - before.num_steps
    parts = {part: round(1000 * s / steps, 2) for part, s in seconds.items()}
    parts["other"] = round(1000 * (total - sum(seconds.values())) / steps, 2)
    return {"tok_s": round(tokens / total, 1), "tokens": tokens, "steps": steps,
            "accepted_drafts": after.num_accepted_tokens - before.num_accepted_tokens,
            "verified_drafts": after.num_draft_tokens - before.num_draft_tokens,
            "tokens_per_step": round(tokens / steps, 3),
            "ms_per_step": round(1000 * total / steps, 2), "ms_by_part": parts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("methods", help=f"comma-separated, of {sorted(speculative_configs(HEAD)) + sorted(ABLATIONS)}")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--streams", type=int, default=1, help="requests at a time")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engines = build_engines(args.methods.split(","), HEAD, args.model or default_model_path())
    tokenizer = next(iter(engines.values())).loaded.tokenizer
    prompts = dataset_prompt_ids(tokenizer, args.dataset, args.prompts)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    for name, engine in engines.items():
        print(name, anatomy(engine, prompts, params, args.streams), flush=True)


if __name__ == "__main__":
    main()
