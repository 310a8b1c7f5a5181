#!/usr/bin/env bash
# Issue 13, phase 29: phase 11's served-calibration replay over the
# committed DSpark head (5,633k anchors, phase 26): the stored map alone
# and stored + the scheduler's online map, per set, on the whole
# evaluation sets (80 MT-Bench + 80 HumanEval prompts, 96 tokens, T=0 and
# T=1). RUN holds eval-draft --records reports of the committed head
# (phase 26's check stage wrote them to runs/calib-c9989-1/whole); missing
# ones are regenerated (about 12 minutes, the two sets in parallel). The
# replay itself takes seconds. From the repository root.
set -euo pipefail
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
OUT=bench/results/2026-12-05-phase29/served-calibration
RUN=${RUN:-runs/calib-c9989-1/whole}
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
mkdir -p "$RUN"
for set in mtbench humaneval; do
  [ -f "$RUN/dspark-$set.json" ] || "$PY" -m engine.spec.training.cli eval-draft \
    --draft-model checkpoints/dspark-smollm2 --drafter head --data "$set:80" --whole-eval-sets \
    --max-new-tokens 96 --temperatures 0 1 --dtype float32 --threads 1 --no-progress --records \
    --report "$RUN/dspark-$set.json" > /dev/null &
done
wait_all
"$PY" -m engine.spec.training.scripts.served_calibration --checkpoint checkpoints/dspark-smollm2 \
  --check "$RUN/dspark-mtbench.json" "$RUN/dspark-humaneval.json" > "$OUT/dspark-whole-sets.md"
