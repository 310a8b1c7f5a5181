"""Fit the n-gram drafter's confidence prior from the target's own outputs.

An n-gram draft's confidence is the probability that it survives given
that the drafts before it did (speculation.md s.1). How likely that is
depends on how the matched suffix went on before (once, always alike, or
variously: `NgramIndex.followers`), on its length and on the position in
the block: a one-token match continues the target's text about one time
in five, far less when that token was followed by different tokens each
time, a four-token match nine times in ten or more, and deep in an
accepted block the next draft survives more often than at its start (the
block is a copied run). This tool replays prompt lookup (`NgramIndex`, as
served) over token sequences the target produced greedily, verifying
every draft up to the first miss as greedy verification does, counts per
(followers, match length, position) how often a draft that was reached
survived, and writes those rates as `engine/spec/ngram_prior.py`. Where
counts are few a cell shrinks towards its (match length, position) rate
over the follower classes, which shrinks towards its position's rate. The online calibrator
(scheduler/calibration.py) still corrects them per server and request;
this prior decides what it starts from and what it assumes for positions
it has not yet seen verified.

    python -m tools.fit_ngram_confidence RUN/fit.jsonl --check RUN/check.jsonl \\
        --out engine/spec/ngram_prior.py

Input: JSON lines with `prompt_ids` and `response_ids` (the target's
greedy replies: the head toolkit's regenerated responses, or
`tools.fit_datastore_confidence generate`'s). Fit on ShareGPT prompts
only; the evaluation sets stay for evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from engine.spec.ngram import FOLLOWER_CLASS_NAMES, FOLLOWER_CLASSES, NgramIndex, prior_for_every_follower_class

MAX_POSITIONS = 16  # --num-speculative-tokens' ceiling (engine/config.py)
SHRINK = 8.0  # pseudo-trials of the pooled rate behind each cell


@dataclass
class SurvivalCounts:
    """Drafts reached and drafts that survived, per (followers, match length,
    position)."""

    reached: Counter = field(default_factory=Counter)
    survived: Counter = field(default_factory=Counter)
    steps: int = 0
    emitted: int = 0


def replay(sequences: Iterable[tuple[list[int], list[int]]], min_n: int, max_n: int,
           block: int = MAX_POSITIONS) -> SurvivalCounts:
    """Greedy speculative decoding replayed over known outputs: at each step
    the n-gram block after the tokens so far, every draft verified up to the
    first that differs from the output, then the accepted drafts and one
    more token emitted."""
    counts = SurvivalCounts()
    for prompt, response in sequences:
        tokens = prompt + response
        index = NgramIndex(min_n, max_n)
        at, end = len(prompt), len(tokens)
        index.extend(tokens[:at])
        while at < end:
            drafts, match = index.continuation(min(block, end - at - 1))
            followers = index.followers(match) if drafts else None  # nothing counted without drafts
            accepted = 0
            for position, token in enumerate(drafts):
                counts.reached[(followers, match, position)] += 1
                if token != tokens[at + position]:
                    break
                counts.survived[(followers, match, position)] += 1
                accepted += 1
            emitted = accepted + 1
            index.extend(tokens[at: at + emitted])
            at += emitted
            counts.steps += 1
            counts.emitted += emitted
    return counts


def fit_table(counts: SurvivalCounts, max_n: int, positions: int = MAX_POSITIONS,
              shrink: float = SHRINK) -> list[list[list[float]]]:
    """table[followers][n - 1][j]: survival of the draft at position j after
    an n-token match whose earlier occurrences went on as `followers` says.
    Each cell shrinks towards its (n, j) rate over the follower classes
    (`pooled_table`)."""
    pooled = pooled_table(counts, max_n, positions, shrink)
    return [[[_shrunk(counts, (f, n, j), pooled[n - 1][j], shrink) for j in range(positions)]
             for n in range(1, max_n + 1)] for f in range(FOLLOWER_CLASSES)]


def pooled_table(counts: SurvivalCounts, max_n: int, positions: int = MAX_POSITIONS,
                 shrink: float = SHRINK) -> list[list[float]]:
    """table[n - 1][j] over every follower class: each cell shrinks towards
    its position's rate pooled over match lengths, which shrinks towards
    the previous position's (the rates of deep positions rest on few
    blocks). The prior before follower classes, and the fit's fallback."""
    by_match, position_rates = Counter(), []
    for key in ("reached", "survived"):
        for (_, n, j), count in getattr(counts, key).items():
            by_match[(key, n, j)] += count
    for j in range(positions):
        reached = sum(by_match[("reached", n, j)] for n in range(1, max_n + 1))
        survived = sum(by_match[("survived", n, j)] for n in range(1, max_n + 1))
        before = position_rates[-1] if position_rates else 0.5
        position_rates.append((survived + shrink * before) / (reached + shrink))
    return [[round((by_match[("survived", n, j)] + shrink * position_rates[j])
                   / (by_match[("reached", n, j)] + shrink), 4) for j in range(positions)]
            for n in range(1, max_n + 1)]


def _shrunk(counts: SurvivalCounts, cell: tuple, towards: float, shrink: float) -> float:
    return round((counts.survived[cell] + shrink * towards) / (counts.reached[cell] + shrink), 4)


def counted_log_loss(reached: Counter, survived: Counter, rate: Callable[[tuple], float]) -> float:
    """Mean binary cross-entropy of `rate(cell)` over drafts counted per
    cell (reached, and of those survived)."""
    total, loss = 0, 0.0
    for cell, count in reached.items():
        p = min(1 - 1e-6, max(1e-6, rate(cell)))
        loss -= survived[cell] * math.log(p) + (count - survived[cell]) * math.log(1 - p)
        total += count
    return loss / total if total else float("nan")


def log_loss(counts: SurvivalCounts, table: Sequence[Sequence[Sequence[float]]]) -> float:
    """Mean binary cross-entropy of the table's rates on reached drafts."""
    def rate(cell):
        rows = table[cell[0]]
        return rows[min(cell[1], len(rows)) - 1][min(cell[2], len(rows[0]) - 1)]
    return counted_log_loss(counts.reached, counts.survived, rate)


def read_sequences(paths: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out.append((list(record["prompt_ids"]), list(record["response_ids"])))
    return out


def module_text(table: list[list[list[float]]], pooled: list[list[float]], command: str,
                counts: SurvivalCounts) -> str:
    classes = ",\n".join(f"    (  # followed {name}\n" + table_lines(by_match, "        ") + ",\n    )"
                          for name, by_match in zip(FOLLOWER_CLASS_NAMES, table))
    return f'''"""The n-gram drafter's confidence prior: the chance that the draft at
position j (0-based) survives given that the ones before it did, after a
match of n tokens (row n - 1) whose earlier occurrences were followed once,
always alike, or variously (engine.spec.ngram's FOLLOWED_*: the outer
index). Fitted by replaying prompt lookup over the target's own greedy
outputs, not hand-set; regenerate with:

    {command}

({counts.steps} replayed decode steps, {sum(counts.reached.values())} drafts reached.)
"""

SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION = (
{classes},
)

# The same fit with the follower classes pooled: the prior before them
# (tools.engine_ab's `ngram-ds-pooled-prior` ablation).
SURVIVAL_BY_MATCH_AND_POSITION = (
{table_lines(pooled, "    ")},
)
'''


def table_lines(table: list[list[float]], indent: str) -> str:
    return ",\n".join(indent + "(" + ", ".join(f"{v:.4f}" for v in row) + ")" for row in table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("responses", nargs="+", help="JSON lines with prompt_ids and response_ids (fit)")
    parser.add_argument("--check", nargs="*", default=[], help="JSON lines to report the fit's loss on")
    parser.add_argument("--min-n", type=int, default=1)
    parser.add_argument("--max-n", type=int, default=4)
    parser.add_argument("--out", default="", help="write the prior module here")
    args = parser.parse_args(argv)
    counts = replay(read_sequences(args.responses), args.min_n, args.max_n)
    table = fit_table(counts, args.max_n)
    pooled_rows = pooled_table(counts, args.max_n)
    pooled = prior_for_every_follower_class(pooled_rows)
    print(f"fit: {counts.steps} steps, {counts.emitted / counts.steps:.3f} tokens/step with every draft verified")
    for followers, (name, by_match) in enumerate(zip(FOLLOWER_CLASS_NAMES, table)):
        reached = sum(count for (f, _, _), count in counts.reached.items() if f == followers)
        print(f"  followed {name} ({reached} drafts reached)")
        for n, row in enumerate(by_match, start=1):
            print(f"    match {n}: " + " ".join(f"{v:.2f}" for v in row))
    print(f"  log loss on the fit: {log_loss(counts, table):.4f} (follower classes pooled: {log_loss(counts, pooled):.4f})")
    if args.check:
        held = replay(read_sequences(args.check), args.min_n, args.max_n)
        print(f"check: log loss {log_loss(held, table):.4f} (pooled: {log_loss(held, pooled):.4f})"
              f" over {sum(held.reached.values())} drafts")
    if args.out:
        command = "python -m tools.fit_ngram_confidence " + " ".join(
            [*args.responses, *(["--check", *args.check] if args.check else []), "--out", args.out])
        Path(args.out).write_text(module_text(table, pooled_rows, command, counts))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
