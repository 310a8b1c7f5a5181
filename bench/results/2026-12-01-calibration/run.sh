#!/usr/bin/env bash
# Calibration methods for the committed heads, out of sample (issue 13):
# fitted on 149 held-out ShareGPT test-split sequences, scored on MT-Bench and
# HumanEval (8 prompts each, 96 new tokens, float32), which no fit sees.
# From the repository root; DATA_PACKAGES as in smollm2-heads.sh. About 20
# minutes per head on one core (the T=1 decode of 149 prompts dominates).
# PYTHON: the interpreter (default python).
set -euo pipefail
OUT=bench/results/2026-12-01-calibration
RUN=${RUN:-runs/calib}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
mkdir -p "$RUN"
for head in ${HEADS:-dspark eagle3}; do
  for set in mtbench humaneval; do  # the heads' raw confidences as served (every draft of 7 verified)
    [ -f "$RUN/$head-$set.json" ] || "$PY" -m engine.spec.training.cli eval-draft \
      --draft-model checkpoints/$head-smollm2 --drafter head --data $set:8 --max-new-tokens 96 \
      --temperatures 0 1 --dtype float32 --threads 1 --no-progress --records --report "$RUN/$head-$set.json" > /dev/null
  done
  [ -f "$RUN/$head-heldout-fit160.json" ] || "$PY" -m engine.spec.training.scripts.calibration_methods records \
    --draft-model checkpoints/$head-smollm2 --work-dir runs/calib-data --heldout-data sharegpt:160 \
    --dtype float32 --out "$RUN/$head-heldout-fit160.json"
  "$PY" -m engine.spec.training.scripts.calibration_methods table --fit "$RUN/$head-heldout-fit160.json" \
    --check "$RUN/$head-mtbench.json" "$RUN/$head-humaneval.json" --checkpoint checkpoints/$head-smollm2 \
    > "$OUT/$head.md"
done
