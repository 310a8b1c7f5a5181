"""What the seeded rule costs in acceptance: rejection sampling (unseeded
requests) against the Gumbel-max coupling (seeded requests, engine/gumbel.py),
on the same draft and target distributions.

    python -m tools.seeded_acceptance --methods eagle3,dflash,dspark --temperatures 0.8,1.0

The engine serves the prompts unseeded (static policy: every draft is
verified) and, at every verified position k, takes the target distribution
p_k (after the request's transforms, given the drafts before k) and the
draft distribution q_k it was drafted from. Given that the drafts before k
survived, each rule accepts draft k with a probability that depends on
(p_k, q_k) only:

- rejection sampling: sum_v min(p_k(v), q_k(v)) = 1 - TV(p_k, q_k), the
  most any coupling can;
- Gumbel coupling: P(argmax(log p_k + g) = argmax(log q_k + g)) =
  sum_v 1 / sum_w max(p_k(w) / p_k(v), q_k(w) / q_k(v))
  (exponential race: both argmaxes are v iff every other clock w rings
  after max(p_w/p_v, q_w/q_v) times v's). Each term is at most
  min(p_k(v), q_k(v)); summing the TOP tokens by that bound leaves out at
  most the printed remainder.

Both are averaged over the same positions (a paired comparison), and the
run's own mean accepted length (rejection sampling) is printed beside.
`--seeded-too` also serves the prompts seeded and prints that run's mean
accepted length.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

import torch

from bench.datasets import load_prompts
from engine import model_runner
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.loader import load_model
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.request import SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = 128


def rejection_acceptance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """p, q [N, V] -> [N]: sum_v min(p, q)."""
    return torch.minimum(p, q).sum(-1)


def gumbel_agreement(p: torch.Tensor, q: torch.Tensor, top: int = TOP) -> tuple[torch.Tensor, torch.Tensor]:
    """p, q [N, V] float64 -> ([N] P(argmaxes agree) over the `top` tokens
    of largest min(p, q), [N] the most the other tokens could add)."""
    bound = torch.minimum(p, q)
    chosen = bound.topk(min(top, p.shape[1]), dim=-1).indices  # [N, T]
    agreement = torch.zeros(p.shape[0], dtype=torch.float64)
    for row in range(p.shape[0]):
        v = chosen[row][bound[row, chosen[row]] > 0]
        ratios = torch.maximum(p[row][None, :] / p[row, v][:, None], q[row][None, :] / q[row, v][:, None])
        agreement[row] = (1.0 / ratios.sum(-1)).sum()
    remainder = bound.sum(-1) - bound.gather(1, chosen).sum(-1)
    return agreement, remainder


@dataclass
class PairedTally:
    """Sums over verified positions of both rules' acceptance probabilities."""

    positions: int = 0
    rejection: float = 0.0
    gumbel: float = 0.0
    remainder: float = 0.0

    def add(self, p: torch.Tensor, q: torch.Tensor) -> None:
        p, q = p.double().cpu(), q.double().cpu()
        agreement, remainder = gumbel_agreement(p, q)
        self.positions += p.shape[0]
        self.rejection += float(rejection_acceptance(p, q).sum())
        self.gumbel += float(agreement.sum())
        self.remainder += float(remainder.sum())


def recording(tally: PairedTally, verify):
    """`verify_drafts` that also adds every verified position's (p, q) to `tally`."""
    def verify_and_record(draft_ids, draft_probs, target_probs, num_draft, *rest):
        row = start = 0
        for n in num_draft:
            if n:
                q = draft_probs[start: start + n] if draft_probs is not None else torch.nn.functional.one_hot(
                    draft_ids[start: start + n], target_probs.shape[1]).to(target_probs.dtype)
                tally.add(target_probs[row: row + n], q)
            row, start = row + n + 1, start + n
        return verify(draft_ids, draft_probs, target_probs, num_draft, *rest)
    return verify_and_record


def make_engine(loaded, method: str, k: int, num_prompts: int) -> LLMEngine:
    draft_model = os.path.join(ROOT, "checkpoints", f"{method}-smollm2") if method in HEAD_METHODS else None
    spec = SpeculativeConfig(method=method, num_speculative_tokens=k, draft_model=draft_model, policy="static")
    config = EngineConfig(model=loaded.path, cache=CacheConfig(num_blocks=512),
                          scheduler=SchedulerConfig(max_num_seqs=num_prompts), speculative=spec)
    return LLMEngine(config, loaded=loaded)


def mean_accepted_length(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    drafts, accepted = engine.stats.num_drafts, engine.stats.num_accepted_tokens
    engine.generate(prompts, params)
    return 1.0 + (engine.stats.num_accepted_tokens - accepted) / max(1, engine.stats.num_drafts - drafts)


def measure(loaded, method: str, temperature: float, prompts, args) -> str:
    """One table row: both rules' acceptance on the unseeded run's positions."""
    engine = make_engine(loaded, method, args.k, len(prompts))
    base = SamplingParams(temperature=temperature, max_tokens=args.max_tokens, ignore_eos=True)
    tally, verify = PairedTally(), model_runner.verify_drafts
    model_runner.verify_drafts = recording(tally, verify)
    try:
        unseeded = mean_accepted_length(engine, prompts, [base] * len(prompts))
    finally:
        model_runner.verify_drafts = verify
    row = (f"| {method} | {temperature} | {tally.positions} | {tally.rejection / tally.positions:.3f} | "
           f"{tally.gumbel / tally.positions:.3f} (+<= {tally.remainder / tally.positions:.4f}) | {unseeded:.2f} |")
    if args.seeded_too:
        seeded = [dataclasses.replace(base, seed=i) for i in range(len(prompts))]
        row += f" {mean_accepted_length(engine, prompts, seeded):.2f} |"
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="eagle3,dflash,dspark")
    parser.add_argument("--temperatures", default="0.8,1.0")
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--dataset", default="chat")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seeded-too", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(None)
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(p.messages)) for p in load_prompts(args.dataset, args.prompts)]
    print(f"{args.dataset}, {args.prompts} prompts x {args.max_tokens} tokens, k={args.k}, static policy")
    header = ("| method | temperature | verified positions | accept, rejection sampling | accept, Gumbel coupling "
              "| mean accepted length (unseeded run) |")
    print(header + (" mean accepted length (seeded run) |" if args.seeded_too else ""))
    print("|---" * (6 + args.seeded_too) + "|")
    for method in args.methods.split(","):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            print(measure(loaded, method, temperature, prompts, args), flush=True)


if __name__ == "__main__":
    main()
