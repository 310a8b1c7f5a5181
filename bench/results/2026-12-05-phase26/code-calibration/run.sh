#!/usr/bin/env bash
# Issue 13, phase 26: the committed DSpark head (5,289,465 anchors, phase
# 25) recalibrated on a code-heavier held-out set. Phase 25 fitted STS on
# 160 held-out ShareGPT prompts (a third of them code) and HumanEval's
# confidences read high out of fit (T=0 5.3%, pooled 3.1%). Here the fit
# set adds the first 160 test-split ShareGPT prompts whose reply holds a
# code fence (source sharegpt-code; 110 not already among the 160): 259
# sequences. MT-Bench and HumanEval stay out of the fit and score it, on
# phase 25's whole-set records. One core: ~45 min (the T=1 decode of the
# held-out prompts is most of it). From the repository root, with phase
# 25's run directory (HEAD: its uncalibrated head, CHECKS: its records).
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
HEAD=${HEAD:-$RUN/dspark-c8000-1}
CHECKS=${CHECKS:-runs/calib-c8000-1/whole}
OUT=${OUT:-bench/results/2026-12-05-phase26/code-calibration}
PY=${PYTHON:-$PWD/.venv/bin/python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
"$PY" -m engine.spec.training.cli calibrate-draft --draft-model "$HEAD" --out "$HEAD-calibrated-code" \
  --work-dir runs/calib-data-code --dtype float32 --heldout-data sharegpt:160,sharegpt-code:160 \
  --max-new-tokens 256 --gen-batch 32 --calibration-tokens 128 --calibration 0=logistic-peak,1=logistic \
  --seed 0 --threads 1 > /dev/null
cp "$HEAD-calibrated-code/calibration-report.json" "$OUT/"
"$PY" -m engine.spec.training.scripts.calibration_methods table \
  --check "$CHECKS"/dspark-{mtbench,humaneval}.json --checkpoint "$HEAD-calibrated-code" > "$OUT/dspark-whole-sets.md"
