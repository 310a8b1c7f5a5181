#!/usr/bin/env bash
# docs/draft-heads.md, "Phase 16": what verifying several n-gram blocks per
# step (a token tree) would accept, replayed over phase 9's greedy outputs
# (40 prompts per set, up to 128 tokens), blocks of 8, 6 and 4 drafts; then
# what verifying k drafts costs one stream here (tools.step_costs, bfloat16,
# batch-invariant kernels, thread CPU time, best of 25 passes).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
D=bench/results/2026-12-03-branches
R=bench/results/2026-12-02-datastore/replay
PY=${PYTHON:-python}
for block in 8 6 4; do
  for set in humaneval mt-bench; do
    echo "== $set, block $block"
    $PY -m tools.datastore_replay replay $R/$set-40.json --block $block --branches 3
  done
done > $D/replay.txt
OMP_NUM_THREADS=1 $PY -m tools.step_costs --modes bfloat16:invariant --passes 25 --sizes 1 --drafts 0,4,8,12,16,20,24,31 > $D/step-costs.md 2>/dev/null
# Through the engine, with the DSpark head's block as one more branch
# (tools.tree_replay, blocks of 7). Its records must be this host's greedy
# outputs: humaneval-40.json and mt-bench-40.json were generated here by
# `tools.datastore_replay generate SET 40` on the 2026-12-03 host; delete
# them to regenerate on another.
for set in humaneval mt-bench; do
  [ -f $D/$set-40.json ] || OMP_NUM_THREADS=1 $PY -m tools.datastore_replay generate $set 40 $D/$set-40.json
  for drafts in 0 2 7; do
    OMP_NUM_THREADS=1 $PY -m tools.tree_replay $D/$set-40.json --draft-model checkpoints/dspark-smollm2 \
      --head-drafts $drafts
  done
done > $D/tree-replay.jsonl
