"""What a draft row really adds to a step under load: every step of one
engine's run at N streams recorded (requests, drafts verified, context
tokens, forward seconds, and what the policy's cost model priced the next
token at), then a least-squares fit of the forward's seconds on requests,
drafts and context over the steps without prefill. Beside it, the model's
mean marginal price, so the two can be read side by side.

    OMP_NUM_THREADS=1 python -m tools.step_fit mt-bench ngram-ds --streams 32 --prompts 96

Methods are tools.engine_ab's. A diagnostic of one run (the host drifts
from run to run: compare within a run, not across runs).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.datasets import DATASETS
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from scheduler.request import SamplingParams
from tools.engine_ab import HEAD, build_engines, dataset_prompt_ids, run_streams

TERMS = ("constant", "per_request", "per_draft", "per_context_token")


def record_steps(engine: LLMEngine) -> list[dict]:
    """Wrap the engine's forward so each step appends its row to the list returned."""
    rows: list[dict] = []
    execute, policy = engine._execute, engine.verify_policy

    def timed(sched):
        started = time.perf_counter()
        out = execute(sched)
        seconds = time.perf_counter() - started
        tokens, cost = sched.total_num_tokens, getattr(policy, "cost", None)
        price = None if cost is None else cost.step_seconds(tokens + 1) - cost.step_seconds(tokens)
        rows.append({"requests": len(sched.scheduled), "tokens": tokens,
                     "drafts": sum(s.num_spec_tokens for s in sched.scheduled),
                     "prefill": any(s.num_query_tokens > 1 for s in sched.scheduled),
                     "context": sum(s.start_position + s.num_query_tokens + s.num_spec_tokens
                                    for s in sched.scheduled),
                     "seconds": seconds, "priced_next_token": price})
        return out

    engine._execute = timed
    return rows


def fit(rows: list[dict]) -> dict:
    """Seconds per term (TERMS) over the decode steps, and the model's mean price."""
    decode = [r for r in rows if not r["prefill"]]
    if len(decode) < len(TERMS):
        raise ValueError(f"{len(decode)} decode steps: too few to fit {len(TERMS)} terms")
    x = np.array([[1.0, r["requests"], r["drafts"], r["context"]] for r in decode])
    y = np.array([r["seconds"] for r in decode])
    coefficients = np.linalg.lstsq(x, y, rcond=None)[0]
    prices = [r["priced_next_token"] for r in decode if r["priced_next_token"] is not None]
    return {"decode_steps": len(decode), **{t: float(c) for t, c in zip(TERMS, coefficients)},
            "mean_priced_next_token": float(np.mean(prices)) if prices else None,
            "mean_drafts": float(np.mean([r["drafts"] for r in decode])),
            "mean_requests": float(np.mean([r["requests"] for r in decode]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("method")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=None, help="also write the steps and the fit here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engine = build_engines([args.method], HEAD, args.model or default_model_path())[args.method]
    prompts = dataset_prompt_ids(engine.loaded.tokenizer, args.dataset, args.prompts)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    engine.generate(prompts[:1], params)  # warm-up
    rows = record_steps(engine)
    run_streams(engine, prompts, args.streams, params)
    result = fit(rows)
    print(json.dumps({k: round(v * 1000, 3) if isinstance(v, float) and k not in ("mean_drafts", "mean_requests")
                      else v for k, v in result.items()}), "(ms)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"fit": result, "steps": rows}, f)


if __name__ == "__main__":
    main()
