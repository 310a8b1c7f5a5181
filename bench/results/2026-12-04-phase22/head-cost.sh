#!/usr/bin/env bash
# Issue 13, phase 22: what a DSpark head run costs before and after commit
# a8d8132 (Markov output packed, plain greedy rows drafted from the draft
# vocabulary's logits, one request's context without a padded copy), side
# by side: tools.head_cost from a snapshot of the code before it and from
# this tree, interleaved (before, after, before, after), one thread, the
# same committed head. From the repository root, on an otherwise quiet
# machine.
#
#   bash bench/results/2026-12-04-phase22/head-cost.sh   # ~4 min
set -euo pipefail
OUT=bench/results/2026-12-04-phase22/head-cost
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
BEFORE=$(mktemp -d)
trap 'rm -rf "$BEFORE"' EXIT
git archive 6da96c2 | tar -x -C "$BEFORE"
for round in 1 2; do
  for side in before after; do
    code=$REPO; [ $side = before ] && code=$BEFORE
    (cd "$code" && OMP_NUM_THREADS=1 "$PY" -m tools.head_cost --draft-model "$REPO/checkpoints/dspark-smollm2" \
      --out "$REPO/$OUT/$side-$round") 2>&1 | grep -v specserve
  done
done
