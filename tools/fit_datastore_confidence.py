"""Fit a corpus datastore's survival map from the target's own outputs.

A datastore draft's share (how often its token followed the context in the
corpus) over-states its survival: the corpus is not the target, and a
chained draft's context is partly drafted. n-gram chooses between prompt
lookup and the datastore by expected accepted drafts, so both must speak
survival rates (speculation.md s.1: the chance that a draft survives given
that the drafts before it did). This tool replays the datastore alone over
token sequences the target produced greedily, verifying every draft up to
the first miss as greedy verification does, counts per (position, length
of the held context, share in tenths) how often a reached draft survived,
and writes those rates into the datastore file (`NgramDatastore.survival`).
Where counts are few a cell shrinks towards its (position, share) rate
over all context lengths, which shrinks towards its share's rate over all
positions.

    python -m tools.fit_datastore_confidence generate 300 RUN/sharegpt-test.jsonl
    python -m tools.fit_datastore_confidence fit engine/spec/datastores/smollm2.safetensors.xz \\
        RUN/sharegpt-test.jsonl --write

`generate` writes the target's greedy float32 replies to ShareGPT
test-split prompts (the datastore builder never reads that split), in the
head toolkit's JSON lines (prompt_ids, response_ids). Fit on text the
datastore was not built from, and leave MT-Bench and HumanEval for
evaluation (tools.datastore_replay).
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.spec.datastore import SHARE_BINS, NgramDatastore, share_bin
from tools.fit_ngram_confidence import counted_log_loss, read_sequences

POSITIONS = 8  # the served block's default length; deeper drafts read the last row
SHRINK = 8.0  # pseudo-trials of the pooled rate behind each cell


@dataclass
class ShareCounts:
    """Drafts reached and drafts that survived, per (position, context
    length, share bin)."""

    reached: Counter = field(default_factory=Counter)
    survived: Counter = field(default_factory=Counter)
    steps: int = 0
    emitted: int = 0


def replay(datastore: NgramDatastore, sequences: Sequence[tuple[list[int], list[int]]],
           block: int = POSITIONS) -> ShareCounts:
    """Greedy speculative decoding over known outputs with the datastore
    alone: at each step its block after the tokens so far, every draft
    verified up to the first that differs, then the accepted drafts and one
    more token emitted."""
    counts = ShareCounts()
    for prompt, response in sequences:
        tokens = prompt + response
        at, end = len(prompt), len(tokens)
        while at < end:
            accepted = 0
            drafts = datastore.chain(tokens[:at], min(block, end - at - 1))
            for position, (token, share, length) in enumerate(drafts):
                cell = (min(position, POSITIONS - 1), length, share_bin(share))
                counts.reached[cell] += 1
                if token != tokens[at + position]:
                    break
                counts.survived[cell] += 1
                accepted += 1
            at += accepted + 1
            counts.steps += 1
            counts.emitted += accepted + 1
    return counts


def fit_map(counts: ShareCounts, max_n: int, shrink: float = SHRINK) -> np.ndarray:
    """[POSITIONS, max_n, SHARE_BINS] survival rates, shrunk (module doc);
    a share bin never reached reads its middle share."""
    def rate(cells: list[tuple], prior: float) -> float:
        reached = sum(counts.reached[cell] for cell in cells)
        return (sum(counts.survived[cell] for cell in cells) + shrink * prior) / (reached + shrink)

    lengths, positions = range(1, max_n + 1), range(POSITIONS)
    table = np.zeros((POSITIONS, max_n, SHARE_BINS), dtype=np.float32)
    for b in range(SHARE_BINS):
        by_share = rate([(j, n, b) for j in positions for n in lengths], (b + 0.5) / SHARE_BINS)
        for j in positions:
            by_position = rate([(j, n, b) for n in lengths], by_share)
            for n in lengths:
                table[j, n - 1, b] = rate([(j, n, b)], by_position)
    return table


def log_loss(counts: ShareCounts, rate) -> float:
    """Mean binary cross-entropy of `rate(position, length, bin)` on reached drafts."""
    return counted_log_loss(counts.reached, counts.survived, lambda cell: rate(*cell))


def raw_share(j: int, n: int, b: int) -> float:
    """A bin's middle share: the raw confidence, for the before/after loss."""
    return (b + 0.5) / SHARE_BINS


def generate(count: int, out: str, max_tokens: int, batch: int) -> None:
    """The target's greedy replies to the first `count` ShareGPT test-split prompts."""
    from engine.models.loader import load_model
    from engine.spec.training.data import load_prompts
    from engine.spec.training.generate import generate_responses
    from engine.spec.training.pipeline import engine_for_generation

    args = argparse.Namespace(gen_batch=batch, max_prompt_tokens=512, max_new_tokens=max_tokens)
    engine = engine_for_generation(load_model(None), args)
    samples = generate_responses(engine, load_prompts(f"sharegpt:{count}", split="test"), out,
                                 max_tokens=max_tokens, batch_size=batch, max_prompt_tokens=512)
    print(f"{len(samples)} replies, {sum(len(s.response_ids) for s in samples)} tokens -> {out}")


def fit(datastore_path: str, responses: Sequence[str], write: bool) -> np.ndarray:
    datastore, sequences = NgramDatastore.load(datastore_path), read_sequences(responses)
    counts = replay(datastore, sequences)
    table = fit_map(counts, datastore.max_n)
    print(f"fit: {counts.steps} steps, {sum(counts.reached.values())} drafts reached, "
          f"{counts.emitted / max(1, counts.steps):.3f} tokens/step (datastore alone, every draft verified)")
    for j in (0, POSITIONS - 1):
        for n in range(1, datastore.max_n + 1):
            print(f"  position {j}, context {n}: " + " ".join(f"{v:.2f}" for v in table[j, n - 1]))
    print(f"  log loss: raw shares {log_loss(counts, raw_share):.4f}, "
          f"fitted {log_loss(counts, lambda j, n, b: float(table[j, n - 1, b])):.4f}")
    if write:
        datastore.survival = table
        datastore.survival_fit = (f"tools.fit_datastore_confidence over {len(sequences)} "
                                  f"of the target's greedy replies ({', '.join(responses)})")
        datastore.save(datastore_path)
        print(f"wrote the map into {datastore_path}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy replies to ShareGPT test-split prompts")
    gen.add_argument("count", type=int)
    gen.add_argument("out")
    gen.add_argument("--max-tokens", type=int, default=192)
    gen.add_argument("--batch", type=int, default=64)
    fitting = sub.add_parser("fit", help="fit the map and print it (--write stores it in the datastore)")
    fitting.add_argument("datastore")
    fitting.add_argument("responses", nargs="+", help="JSON lines with prompt_ids and response_ids")
    fitting.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args.count, args.out, args.max_tokens, args.batch)
    else:
        fit(args.datastore, args.responses, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
