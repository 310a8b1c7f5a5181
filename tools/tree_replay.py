"""Exact replay of token-tree verification at T=0 through the engine, with
a trained head's block as one of the branches.

At temperature 0 verifying several branches as one tree keeps the branch
whose prefix matches the target's greedy output furthest. Given that output
(a record of `tools.datastore_replay generate`), each step can be replayed
by handing the engine just that branch: the engine then walks the path a
tree would, its head absorbs the target's features as it would, and the
head drafts from the very state it would have. Branches: up to N
continuations of the matched suffix (prompt lookup's block and what the
suffix's other occurrences went on with), the corpus datastore's block and,
unless `--head-drafts 0`, the first drafts of the head's block. Ties go to
n-gram's branches, so the head is credited only where it accepts more.

    OMP_NUM_THREADS=1 python -m tools.tree_replay RECORDS.json --draft-model checkpoints/dspark-smollm2

Records made on another host or in another dtype may not be this host's
greedy outputs; the run then fails rather than report a replay that was not
exact.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from engine.spec.base import DraftInput
from engine.spec.datastore import NgramDatastore
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.base import DraftHead
from scheduler.drafts import DraftBlock
from tools.datastore_replay import DEFAULT_DATASTORE, accepted_prefix, suffix_continuations


@dataclass
class TreeTally:
    """Drafts of the kept branches (all of them accepted, by construction)
    and the source of each kept branch."""

    accepted: int = 0
    kept: Counter = field(default_factory=Counter)


class TreeOracle(HeadDrafter):
    """Hands the engine, per request and step, the branch its known greedy
    output accepts furthest (what verifying all of them as a tree keeps)."""

    def __init__(self, head: DraftHead, references: dict[tuple[int, ...], list[int]],
                 datastore: NgramDatastore | None, continuations: int, head_drafts: int):
        super().__init__(head)
        self.references, self.datastore = references, datastore
        self.continuations, self.head_drafts = continuations, head_drafts
        self.tally = TreeTally()

    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        head_blocks = super().propose(inputs) if self.head_drafts else {}
        kept = {}
        for item in inputs:
            block = self._kept_branch(item, head_blocks.get(item.request.request_id))
            if block is not None:
                kept[item.request.request_id] = block
        return kept

    def _kept_branch(self, item: DraftInput, head_block: DraftBlock | None) -> DraftBlock | None:
        request = item.request
        output = self.references[tuple(request.prompt_token_ids)]
        context, position = request.all_token_ids, request.num_output_tokens
        scored = [(accepted_prefix(tokens, output, position), -order, source, tokens)
                  for order, (source, tokens) in enumerate(self._branches(context, item.max_tokens, head_block))]
        accepted, _, source, tokens = max(scored, default=(0, 0, "", []))
        if not accepted:
            return None
        self.tally.accepted += accepted
        self.tally.kept[source] += 1
        return DraftBlock(tokens[:accepted], [1.0] * accepted, None, source)

    def _branches(self, context: list[int], k: int, head_block: DraftBlock | None) -> list[tuple[str, list[int]]]:
        if k <= 0:
            return []
        branches = [("prompt lookup", b) for b in suffix_continuations(context, k, self.continuations)]
        if self.datastore is not None:
            tokens, _ = self.datastore.calibrated_continuation(context, k)
            branches.append(("datastore", tokens))
        if head_block is not None:
            branches.append(("head", head_block.token_ids[:min(k, self.head_drafts)]))
        return [(source, tokens) for source, tokens in branches if tokens]


def replay_tree(engine_for: Callable[[HeadDrafter], object], head: DraftHead, records: list[dict], datastore: NgramDatastore | None,
                continuations: int, head_drafts: int) -> dict:
    """Greedy decode of every record's prompt, one at a time, through
    `engine_for(drafter)` with a TreeOracle drafting; fails unless the
    outputs are the records' and the engine accepted every kept draft."""
    from scheduler.request import SamplingParams

    references = {tuple(r["prompt"]): r["output"] for r in records}
    oracle = TreeOracle(head, references, datastore, continuations, head_drafts)
    engine = engine_for(oracle)
    longest = max(len(r["output"]) for r in records)
    # One stream, one record at a time: batched, the step's token budget
    # would cut some kept branches short.
    params = SamplingParams(temperature=0.0, max_tokens=longest)
    outputs = [engine.generate([r["prompt"]], params)[0] for r in records]
    differing = sum(out != r["output"] for out, r in zip(outputs, records))
    if differing:
        raise RuntimeError(f"{differing} of {len(records)} greedy outputs differ from the records: they were "
                           "made on another host or dtype, so a replay against them would not be exact")
    tally, stats = oracle.tally, engine.snapshot_stats()
    if not stats.num_accepted_tokens == stats.num_draft_tokens == tally.accepted:
        raise RuntimeError(f"the engine accepted {stats.num_accepted_tokens} of {stats.num_draft_tokens} drafts "
                           f"where the kept branches' {tally.accepted} should all have survived")
    # Decode steps after the prefill: each emits its accepted drafts and one token more.
    tokens = sum(len(r["output"]) - 1 for r in records)
    steps = tokens - tally.accepted
    return {"prompts": len(records), "decode_steps": steps, "tokens_per_step": round(tokens / max(1, steps), 3),
            "kept_by_source": dict(tally.kept), "continuations": continuations, "head_drafts": head_drafts}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records")
    parser.add_argument("--draft-model", required=True, help="head checkpoint directory")
    parser.add_argument("--datastore", default=DEFAULT_DATASTORE, help="'none': no datastore branch")
    parser.add_argument("--block", type=int, default=7, help="drafts per branch at most")
    parser.add_argument("--continuations", type=int, default=3)
    parser.add_argument("--head-drafts", type=int, default=7, help="0: no head branch")
    args = parser.parse_args(argv)
    import torch

    from engine.config import EngineConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from engine.models.default import default_model_path
    from engine.spec.heads.checkpoint import load_head, read_head_config

    torch.set_num_threads(1)
    with open(args.records) as f:
        records = json.load(f)
    method = read_head_config(args.draft_model).method
    spec = SpeculativeConfig(method=method, draft_model=args.draft_model, policy="static",
                             num_speculative_tokens=args.block)
    config = EngineConfig(model=default_model_path(), speculative=spec, machine_counters=False)
    loaded = LLMEngine(EngineConfig(model=default_model_path(), speculative=SpeculativeConfig(method="none"),
                                    machine_counters=False)).loaded
    head = load_head(args.draft_model, loaded.model, next(loaded.model.parameters()).dtype)
    head.use_inference_kernels()
    datastore = None if args.datastore == "none" else NgramDatastore.load(args.datastore)
    report = replay_tree(lambda drafter: LLMEngine(config, loaded=loaded, drafter=drafter), head, records,
                         datastore, args.continuations, args.head_drafts)
    print(json.dumps({"records": args.records, "block": args.block} | report))


if __name__ == "__main__":
    main()
