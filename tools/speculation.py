"""Speculation off vs drafters, in-process, side by side in one run.

    python -m tools.speculation --sets code-copy,chat --methods none,ngram,self-draft

For every prompt the configured engines run one after another (interleaved,
so machine noise hits them alike); each reports single-stream output
tokens/s and its mean accepted length (tokens emitted per verification
step, bonus included). Greedy decoding, so every engine must produce the
same tokens: the run checks that too.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

import torch

from bench.datasets import load_prompts
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.loader import load_model
from scheduler.request import SamplingParams


@dataclass
class Tally:
    """Totals of one (prompt set, engine) cell."""

    tokens: int = 0
    seconds: float = 0.0
    drafts: int = 0
    accepted: int = 0
    mismatches: int = 0
    per_prompt: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted / self.drafts if self.drafts else 1.0


def build_engines(labels: list[str], k: int, policy: str, model: str | None, self_draft_layers: int):
    """One engine per label METHOD[=DRAFT_PATH][@POLICY][:K] ('none', 'ngram@static:4',
    'self-draft', 'draft-model=PATH@adaptive'), sharing the target's weights."""
    loaded = load_model(model, torch.float32, "cpu")
    engines = {}
    for label in labels:
        spec_part, _, label_policy = label.partition("@")
        label_policy, _, label_k = label_policy.partition(":")
        method, _, draft = spec_part.partition("=")
        spec = SpeculativeConfig(method=method, num_speculative_tokens=int(label_k or k),
                                 policy=label_policy or policy,
                                 draft_model=draft or None, self_draft_layers=self_draft_layers)
        config = EngineConfig(model=loaded.path, cache=CacheConfig(block_size=16, num_blocks=512),
                              scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256,
                                                        max_model_len=2048),
                              speculative=spec)
        engines[label] = LLMEngine(config, loaded=loaded)
    return engines


def run_one(engine: LLMEngine, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], float, int, int]:
    before = engine.snapshot_stats()
    start = time.perf_counter()
    out = engine.generate([prompt_ids], params)[0]
    seconds = time.perf_counter() - start
    after = engine.snapshot_stats()
    return out, seconds, after.num_drafts - before.num_drafts, after.num_accepted_tokens - before.num_accepted_tokens


def run(sets: list[str], labels: list[str], num_prompts: int, max_tokens: int, k: int,
        policy: str, model: str | None, self_draft_layers: int) -> dict:
    engines = build_engines(labels, k, policy, model, self_draft_layers)
    tokenizer = next(iter(engines.values())).tokenizer
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    results = {}
    for set_name in sets:
        tallies = {label: Tally() for label in labels}
        for prompt in load_prompts(set_name, num_prompts, seed=0):
            ids = tokenizer.encode(tokenizer.apply_chat_template(list(prompt.messages)))
            reference = None
            for label, engine in engines.items():
                out, seconds, drafts, accepted = run_one(engine, ids, params)
                tally = tallies[label]
                tally.tokens += len(out)
                tally.seconds += seconds
                tally.drafts += drafts
                tally.accepted += accepted
                tally.per_prompt.append(len(out) / seconds)
                reference = reference if reference is not None else out
                tally.mismatches += out != reference
        results[set_name] = {label: vars(t) | {"tokens_per_second": t.tokens_per_second,
                                               "mean_accepted_length": t.mean_accepted_length}
                             for label, t in tallies.items()}
    return results


def format_table(results: dict, baseline: str = "none") -> str:
    lines = ["| prompt set | engine | tokens/s | vs off | mean accepted length | outputs differing |",
             "|---|---|---|---|---|---|"]
    for set_name, cells in results.items():
        base = cells.get(baseline, {}).get("tokens_per_second") or 0.0
        for label, cell in cells.items():
            ratio = cell["tokens_per_second"] / base if base else float("nan")
            lines.append(f"| {set_name} | {label} | {cell['tokens_per_second']:.1f} | {ratio:.2f}x | "
                         f"{cell['mean_accepted_length']:.2f} | {cell['mismatches']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="code-copy,chat")
    parser.add_argument("--methods", default="none,ngram@static,ngram@adaptive,self-draft@static,self-draft@adaptive")
    parser.add_argument("--prompts", type=int, default=6, help="prompts per set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=4, help="--num-speculative-tokens")
    parser.add_argument("--policy", default="adaptive",
                        help="verification policy of engines whose label names none (METHOD@POLICY)")
    parser.add_argument("--self-draft-layers", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.sets.split(","), args.methods.split(","), args.prompts, args.max_tokens,
                  args.k, args.policy, args.model, args.self_draft_layers)
    table = format_table(results)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(args.out, f"speculation-{stamp}.json"), "w") as f:
        json.dump({"args": vars(args), "results": results, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
