"""What the seeded rule costs in acceptance: mean accepted length of seeded
requests (Gumbel-max coupling, engine/gumbel.py) against unseeded ones
(rejection sampling), same drafter, prompts, temperature and k.

    python -m bench.seeded_acceptance --methods eagle3,dflash,dspark --temperatures 0.8,1.0

Every prompt runs once per rule (seeded: seed = prompt index), one request at
a time, static policy (every draft verified), so the two rules see the same
verification lengths. Rejection sampling accepts a draft with probability
1 - TV(p, q), the most any coupling can; the Gumbel coupling accepts when
both argmaxes under shared noise agree, which is less. The printout is the
price of reproducible seeds.
"""
from __future__ import annotations

import argparse
import os

import torch

from bench.datasets import load_prompts
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.loader import load_model
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.request import SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_engine(loaded, method: str, k: int) -> LLMEngine:
    draft_model = os.path.join(ROOT, "checkpoints", f"{method}-smollm2") if method in HEAD_METHODS else None
    spec = SpeculativeConfig(method=method, num_speculative_tokens=k, draft_model=draft_model, policy="static")
    config = EngineConfig(model=loaded.path, cache=CacheConfig(num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=1), speculative=spec)
    return LLMEngine(config, loaded=loaded)


def mean_accepted_length(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    before_drafts, before_accepted = engine.stats.num_drafts, engine.stats.num_accepted_tokens
    for prompt, p in zip(prompts, params):
        engine.generate([prompt], p)
    drafts = engine.stats.num_drafts - before_drafts
    return 1.0 + (engine.stats.num_accepted_tokens - before_accepted) / max(1, drafts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="eagle3,dflash,dspark")
    parser.add_argument("--temperatures", default="0.8,1.0")
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--dataset", default="chat")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(None)
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(p.messages)) for p in load_prompts(args.dataset, args.prompts)]
    print(f"{args.dataset}, {args.prompts} prompts x {args.max_tokens} tokens, k={args.k}, static policy")
    print("| method | temperature | rejection sampling (unseeded) | Gumbel coupling (seeded) |\n|---|---|---|---|")
    for method in args.methods.split(","):
        engine = make_engine(loaded, method, args.k)
        for temperature in (float(t) for t in args.temperatures.split(",")):
            base = SamplingParams(temperature=temperature, max_tokens=args.max_tokens, ignore_eos=True)
            unseeded = mean_accepted_length(engine, prompts, [base] * len(prompts))
            seeded = mean_accepted_length(engine, prompts, [SamplingParams(**{**vars(base), "seed": i})
                                                            for i in range(len(prompts))])
            print(f"| {method} | {temperature} | {unseeded:.2f} | {seeded:.2f} |", flush=True)


if __name__ == "__main__":
    main()
