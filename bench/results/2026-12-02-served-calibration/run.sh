#!/usr/bin/env bash
# Issue 13, phase 11: the committed DSpark's confidences as the scheduler
# reads them (the stored map, then the online ConfidenceCalibrator),
# replayed over whole-set records in verification order. From the
# repository root; DATA_PACKAGES as in smollm2-heads.sh (MT-Bench and
# HumanEval); PYTHON the interpreter. The records: eval-draft of phase 5's
# whole-set check (80 prompts per set, 96 tokens, T=0 and T=1, float32),
# about 12 minutes with the two sets in parallel, one core each.
set -euo pipefail
# Each background job is waited for by its pid, so that a failed one stops the script.
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
OUT=${OUT:-bench/results/2026-12-02-served-calibration}  # later phases call this with their own (and RUN)
RUN=${RUN:-runs/calib-s13/whole}
PY=${PYTHON:-python}
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
