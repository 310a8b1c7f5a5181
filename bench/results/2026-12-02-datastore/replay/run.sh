#!/usr/bin/env bash
# The offline replay of docs/draft-heads.md, "Phase 9": the target's greedy
# outputs (speculation off, 40 prompts per set, up to 128 tokens, the
# engine's default dtype), then n-gram drafting replayed over them.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
D=bench/results/2026-12-02-datastore/replay
PY=${PYTHON:-python}
for set in humaneval mt-bench; do
  [ -f $D/$set-40.json ] || OMP_NUM_THREADS=1 $PY -m tools.datastore_replay generate $set 40 $D/$set-40.json
done
for set in humaneval mt-bench; do echo "== $set"; $PY -m tools.datastore_replay replay $D/$set-40.json; done > $D/replay.txt
