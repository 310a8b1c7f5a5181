"""Offline replay of n-gram drafting over the target's own greedy outputs:
tokens per target step when every draft of a block is verified, for
prompt lookup alone, the corpus datastore alone, prompt lookup else the
datastore, and the block of the two that promises more accepted drafts
(what `--ngram-datastore` serves when the datastore carries a fitted
survival map), also with prompt lookup's prior pooled over its follower
classes (as before them), with the calibration of the confidences on the
drafts made: the datastore's (its map's rates where it has one), and for
the better block every draft's, as the scheduler reads them.

    OMP_NUM_THREADS=1 python -m tools.datastore_replay generate humaneval 40 OUT.json
    python -m tools.datastore_replay replay OUT.json [--datastore PATH] [--block 8] [--branches 3]

`--branches N` adds what verifying several blocks per step (a token tree)
would accept: prompt lookup's block beside the datastore's, and up to N
continuations of the matched suffix beside the datastore's.

Greedy outputs make the replay exact: a draft survives iff it is the
token the target emitted there.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

from engine.spec.datastore import NgramDatastore
from engine.spec.ngram import (NgramDrafter, NgramIndex, find_ngram_continuation, prior_for_every_follower_class,
                               with_alternative)
from engine.spec.ngram_prior import SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION, SURVIVAL_BY_MATCH_AND_POSITION
from scheduler.drafts import FREE_DRAFTING

DEFAULT_DATASTORE = "engine/spec/datastores/smollm2.safetensors.xz"
Proposer = Callable[[list[int], int], tuple[list[int], list[float] | None]]


def prompt_lookup(min_n: int = 1, max_n: int = 4) -> Proposer:
    return lambda context, k: (find_ngram_continuation(context, min_n, max_n, k)[0], None)


def from_datastore(datastore: NgramDatastore) -> Proposer:
    return lambda context, k: datastore.calibrated_continuation(context, k)


def better_block(datastore: NgramDatastore, min_n: int = 1, max_n: int = 4,
                 prior=SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION) -> Proposer:
    """What n-gram serves: `NgramDrafter.block_for` over the context, with
    prompt lookup's `prior`; every draft reports its confidence."""
    drafter = NgramDrafter(min_n, max_n, survival_prior=prior, datastore=datastore)

    def propose(context: list[int], k: int):
        index = NgramIndex(min_n, max_n)
        index.extend(context)
        block = drafter.block_for(index, k)
        return (block.token_ids, block.confidences) if block is not None else ([], None)
    return propose


def lookup_else(first: Proposer, second: Proposer) -> Proposer:
    def propose(context: list[int], k: int):
        tokens, confidences = first(context, k)
        return (tokens, confidences) if tokens else second(context, k)
    return propose


Branches = Callable[[list[int], int], list[list[int]]]


def suffix_continuations(context: list[int], k: int, most: int, min_n: int = 1, max_n: int = 4) -> list[list[int]]:
    """Up to `most` continuations (k tokens each, at most) of the longest
    suffix that occurred earlier, one per distinct first token, the most
    recent occurrence first: prompt lookup's block, then what the other
    occurrences went on with."""
    if most <= 0:
        return []
    total = len(context)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix, found = context[total - n:], {}
        for start in range(total - n - 1, -1, -1):
            follow = context[start + n:start + n + k]
            if follow and follow[0] not in found and context[start:start + n] == suffix:
                found[follow[0]] = follow
                if len(found) == most:
                    break
        if found:
            return list(found.values())
    return []


def branches_of(*sources: Callable[[list[int], int], list[list[int]]]) -> Branches:
    """Every block the sources offer, the empty ones dropped."""
    return lambda context, k: [b for source in sources for b in source(context, k) if b]


def replay_branches(records: list[dict], branches: Branches, block: int) -> tuple[float, float]:
    """Tokens per step and drafts verified per step when every branch a
    step offers is verified at once as one token tree (branches that start
    alike share those nodes: the drafts verified are its distinct
    prefixes); the step keeps the branch with the longest accepted prefix."""
    verified = 0

    def step(context: list[int], output: list[int], position: int) -> int:
        nonlocal verified
        offered = [b[:block] for b in branches(context, block)]
        verified += len({tuple(b[:i + 1]) for b in offered for i in range(len(b))})
        return max((accepted_prefix(b, output, position) for b in offered), default=0)

    tokens_per_step, steps = _walk(records, step)
    return tokens_per_step, verified / max(1, steps)


def _walk(records: list[dict], step: Callable[[list[int], list[int], int], int]) -> tuple[float, int]:
    """Greedy verification over each record's output: `step(context,
    output, position)` gives the drafts accepted there, and the step emits
    one token more. Returns tokens per step and the number of steps."""
    steps = tokens = 0
    for record in records:
        prompt, output = record["prompt"], record["output"]
        position = 0
        while position < len(output):
            position += step(prompt + output[:position], output, position) + 1
            steps += 1
        tokens += len(output)
    return tokens / max(1, steps), steps


def accepted_prefix(drafts: list[int], output: list[int], position: int) -> int:
    """How many of `drafts` greedy verification keeps at `position` of `output`."""
    accepted = 0
    for j, token in enumerate(drafts):
        if position + j >= len(output) or token != output[position + j]:
            break
        accepted += 1
    return accepted


def replay(records: list[dict], propose: Proposer, block: int) -> tuple[float, list[tuple[float, bool]]]:
    """Tokens per step over the records, and (confidence, survived) of every
    draft that had a confidence and whose predecessors survived (a block
    without confidences reports None)."""
    observed: list[tuple[float, bool]] = []

    def step(context: list[int], output: list[int], position: int) -> int:
        drafts, confidences = propose(context, block)
        drafts = drafts[:block]
        accepted = accepted_prefix(drafts, output, position)
        if confidences is not None:
            observed.extend((confidences[j], j < accepted) for j in range(min(len(drafts), accepted + 1)))
        return accepted

    tokens_per_step, _ = _walk(records, step)
    return tokens_per_step, observed


def calibration(observed: list[tuple[float, bool]], bins: int = 10) -> dict:
    """Mean confidence, survival rate and 10-bin ECE of the drafts observed."""
    if not observed:
        return {"drafts": 0}
    table: dict[int, list[float]] = {}
    for confidence, survived in observed:
        row = table.setdefault(min(bins - 1, int(confidence * bins)), [0.0, 0.0, 0])
        row[0] += confidence
        row[1] += survived
        row[2] += 1
    ece = sum(abs(c - s) for c, s, _ in table.values()) / len(observed)
    return {"drafts": len(observed), "mean_confidence": round(sum(c for c, _ in observed) / len(observed), 3),
            "survival": round(sum(s for _, s in observed) / len(observed), 3), "ece": round(ece, 3)}


def generate(dataset: str, prompts: int, out: str, max_tokens: int) -> None:
    import torch

    from engine.config import EngineConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from engine.models.default import default_model_path
    from scheduler.request import SamplingParams
    from tools.engine_ab import dataset_prompt_ids

    torch.set_num_threads(1)
    engine = LLMEngine(EngineConfig(model=default_model_path(), speculative=SpeculativeConfig(method="none"),
                                    machine_counters=False))
    ids = dataset_prompt_ids(engine.loaded.tokenizer, dataset, prompts)
    outputs = engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    with open(out, "w") as f:
        json.dump([{"prompt": p, "output": o} for p, o in zip(ids, outputs)], f)
    print(f"{dataset}: {len(outputs)} outputs, {sum(map(len, outputs))} tokens -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("dataset")
    gen.add_argument("prompts", type=int)
    gen.add_argument("out")
    gen.add_argument("--max-tokens", type=int, default=128)
    rep = sub.add_parser("replay")
    rep.add_argument("records")
    rep.add_argument("--datastore", default=DEFAULT_DATASTORE)
    rep.add_argument("--block", type=int, default=8)
    rep.add_argument("--branches", type=int, default=0, metavar="N",
                     help="also replay verifying several blocks per step: prompt lookup's and the datastore's, "
                          "and up to N continuations of the matched suffix beside the datastore's")
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args.dataset, args.prompts, args.out, args.max_tokens)
        return
    with open(args.records) as f:
        records = json.load(f)
    datastore = NgramDatastore.load(args.datastore)
    proposers = {"prompt lookup": prompt_lookup(), "datastore": from_datastore(datastore),
                 "prompt lookup, else datastore": lookup_else(prompt_lookup(), from_datastore(datastore))}
    if datastore.survival is not None:
        proposers["the better block"] = better_block(datastore)
        proposers["the better block, follower classes pooled"] = better_block(
            datastore, prior=prior_for_every_follower_class(SURVIVAL_BY_MATCH_AND_POSITION))
    for name, propose in proposers.items():
        tokens_per_step, observed = replay(records, propose, args.block)
        print(f"{name}: {tokens_per_step:.3f} tokens per step", json.dumps(calibration(observed)) if observed else "")
    if args.branches:
        for name, branches in branch_variants(datastore, args.branches).items():
            tokens_per_step, verified = replay_branches(records, branches, args.block)
            print(f"{name}: {tokens_per_step:.3f} tokens per step, {verified:.2f} drafts verified per step")


def branch_variants(datastore: NgramDatastore, most: int) -> dict[str, Branches]:
    """Several blocks verified per step: what a token tree over n-gram's
    sources would accept, and what the engine verifies with
    --ngram-alternatives."""
    def as_branch(propose: Proposer) -> Callable[[list[int], int], list[list[int]]]:
        return lambda context, k: [propose(context, k)[0]]

    def continuations(context: list[int], k: int) -> list[list[int]]:
        return suffix_continuations(context, k, most)

    lookup, store = as_branch(prompt_lookup()), as_branch(from_datastore(datastore))
    variants = {"branches: prompt lookup and datastore": branches_of(lookup, store),
            f"branches: up to {most} continuations of the matched suffix and datastore":
                branches_of(continuations, store)}
    if datastore.survival is not None:
        variants["served (--ngram-alternatives): the better block, the other as its alternative"] = \
            served_alternatives(datastore)
    return variants


def served_alternatives(datastore: NgramDatastore, min_n: int = 1, max_n: int = 4) -> Branches:
    """What `--ngram-alternatives` verifies at idle: the better block and
    the other source's block as its alternative branch, where they start
    differently (`engine.spec.ngram.with_alternative`)."""
    drafter = NgramDrafter(min_n, max_n, datastore=datastore, alternatives=True)

    def branches(context: list[int], k: int) -> list[list[int]]:
        index = NgramIndex(min_n, max_n)
        index.extend(context)
        block, other = drafter.blocks_for(index, k, other=True)
        if block is None:
            return []
        if other is not None:
            block = with_alternative(block, other, FREE_DRAFTING)
        return [block.token_ids] + [list(branch) for branch in block.alternatives]
    return branches


if __name__ == "__main__":
    main()
