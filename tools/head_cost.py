"""What a trained head's drafting costs next to the target's decode step.

One run, side by side: the same prompt decoded greedily with the head
drafting every step (static policy, every draft verified), once with the
head as served (`HeadDrafter.from_checkpoint`: linears and the restricted
LM head packed for inference) and once with its plain modules; then the
target alone (speculation off). Reported per configuration: the median
milliseconds of one `propose` (folding the new features plus drafting one
block) and of one engine step, and the ratio of a draft to a plain decode
step, the figure the hybrid's payoff weighs.

    python -m tools.head_cost --draft-model checkpoints/dspark-smollm2 --out bench/results/DATE-head-cost
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

PROMPT = "Explain in a few sentences why the sky is blue, then give one everyday example."


class _Timed:
    """Wraps a callable, keeping the seconds of each call."""

    def __init__(self, fn: Callable):
        self.fn, self.seconds = fn, []

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - started)


def _median_ms(seconds: list[float]) -> float | None:
    return round(1000 * statistics.median(seconds), 2) if seconds else None


def measure(engine, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    """Median ms per engine step and per drafter propose over `repeats`
    greedy decodes of the prompt (the first, warm-up, not counted)."""
    from scheduler.request import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    engine.generate([prompt_ids], params)  # warm-up: kernels, caches
    step = _Timed(engine.step)
    engine.step = step
    propose = None
    if engine.drafter is not None:
        propose = _Timed(engine.drafter.propose)
        engine.drafter.propose = propose
    for _ in range(repeats):
        engine.generate([prompt_ids], params)
    stats = engine.snapshot_stats()
    return {"step_ms": _median_ms(step.seconds), "propose_ms": _median_ms(propose.seconds) if propose else None,
            "steps": len(step.seconds), "tau": round(stats.mean_accepted_length, 3) if stats.num_drafts else None}


def run(draft_model: str, model: str | None, new_tokens: int, repeats: int, drafts: int | None = None) -> dict:
    from engine.models.default import default_model_path
    from engine.config import EngineConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from engine.spec.head_drafter import HeadDrafter
    from engine.spec.heads.checkpoint import load_head, read_head_config

    model = model or default_model_path()
    method = read_head_config(draft_model).method
    spec = SpeculativeConfig(method=method, draft_model=draft_model, policy="static",
                             num_speculative_tokens=drafts or read_head_config(draft_model).block_size)
    served = LLMEngine(EngineConfig(model=model, speculative=spec, machine_counters=False))
    prompt_ids = served.tokenizer.encode(served.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True))
    plain_head = HeadDrafter(load_head(draft_model, served.loaded.model, served.drafter.dtype))
    plain_head.calibration = served.drafter.calibration
    unpacked = LLMEngine(EngineConfig(model=model, speculative=spec, machine_counters=False),
                         loaded=served.loaded, drafter=plain_head)
    off = LLMEngine(EngineConfig(model=model, speculative=SpeculativeConfig(method="none"), machine_counters=False),
                    loaded=served.loaded)
    results = {"served (packed)": measure(served, prompt_ids, new_tokens, repeats),
               "plain modules": measure(unpacked, prompt_ids, new_tokens, repeats),
               "speculation off": measure(off, prompt_ids, new_tokens, repeats)}
    decode_ms = results["speculation off"]["step_ms"]
    for name in ("served (packed)", "plain modules"):
        results[name]["propose_over_decode_step"] = round(results[name]["propose_ms"] / decode_ms, 3)
    return {"draft_model": draft_model, "method": method, "model": model, "new_tokens": new_tokens,
            "repeats": repeats, "drafts": spec.num_speculative_tokens, "prompt_tokens": len(prompt_ids),
            "results": results}


def table(report: dict) -> str:
    lines = ["| configuration | ms per propose | ms per engine step | propose / decode step | tau |",
             "|---|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['propose_ms'] if r['propose_ms'] is not None else '-'} | {r['step_ms']} | "
                     f"{r.get('propose_over_decode_step', '-')} | {r['tau'] or '-'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draft-model", required=True, help="head checkpoint directory")
    p.add_argument("--model", default=None, help="target (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--drafts", type=int, default=None, help="drafts per block (default: the head's block size)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="directory for head_cost.json and table.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = run(args.draft_model, args.model, args.new_tokens, args.repeats, args.drafts)
    report["threads"] = args.threads
    text = table(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "head_cost.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
