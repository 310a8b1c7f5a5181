#!/usr/bin/env bash
# Issue 13, phase 19: what a trained DSpark head needs before it replaces the
# committed one, after run.sh's STAGE=train. Two cores, about 45 minutes:
#   core 1: calibrate-draft with a method per temperature (phase 7:
#           0=logistic-peak,1=logistic) on 160 held-out ShareGPT sequences,
#           then the hybrid (n-gram + the calibrated head) per set, as
#           smollm2-heads-eval.sh evaluates it;
#   core 2: phase 18's run.sh STAGE=eval (tau per set, 8 prompts, T=0 and T=1, as
#           phases 5-8), then the whole-set records (80 MT-Bench and 80
#           HumanEval prompts, 96 tokens, float32, every draft of 7
#           verified, as phase 7).
# Then the calibrated head's stored calibration scored out of fit on those
# records (dspark-whole-sets.md). Another trained head: HEAD_DIR (its
# run directory), OUT (a new results folder) and CHECKS (a new records
# folder), HELDOUT_DATA, CALIBRATION_DATA and CALIBRATION_TOKENS (the
# STS fit's prompts, their cache, T=1 tokens per prompt), e.g. for a follow-on run (docs/draft-heads.md, phase 19). From the repository root; DATA_PACKAGES
# as in smollm2-heads.sh; PYTHON the interpreter.
set -euo pipefail
OUT=${OUT:-bench/results/2026-12-03-bf16-data}  # another run: a new results folder
RUN=${RUN:-$PWD/runs/heads-smollm2}
HEAD=${HEAD_DIR:-$RUN/dspark-bf16data}  # the trained head to check
CANDIDATE=$HEAD-calibrated
CHECKS=${CHECKS:-runs/calib-bf16data/whole}  # another head: another folder
PY=${PYTHON:-python}
# The STS fit's held-out prompts and their cache (phase 26: with code).
# CALIBRATION_TOKENS: decoded per prompt at T=1 for that temperature's fit.
HELDOUT_DATA=${HELDOUT_DATA:-sharegpt:160} CALIBRATION_DATA=${CALIBRATION_DATA:-runs/calib-data}
CALIBRATION_TOKENS=${CALIBRATION_TOKENS:-128}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
mkdir -p "$CHECKS" "$OUT"
calibrate_then_hybrid() {
  [ -f "$CANDIDATE/config.json" ] || "$PY" -m engine.spec.training.cli calibrate-draft \
    --draft-model "$HEAD" --out "$CANDIDATE" --work-dir "$CALIBRATION_DATA" --dtype float32 \
    --heldout-data "$HELDOUT_DATA" --max-new-tokens 256 --gen-batch 32 --calibration-tokens "$CALIBRATION_TOKENS" \
    --calibration 0=logistic-peak,1=logistic --seed 0 --threads 1 > /dev/null
  for set in mtbench humaneval sharegpt; do
    report=$RUN/eval/hybrid-$(basename "$HEAD")-$set.json
    [ -f "$report" ] || "$PY" -m engine.spec.training.cli eval-draft --draft-model "$CANDIDATE" --drafter hybrid \
      --data "$set:8" --max-new-tokens 96 --temperatures 0 1 --dtype float32 --threads 1 --no-progress \
      --report "$report" > /dev/null
    cp "$report" "$OUT/"
  done
}
mkdir -p "$RUN/eval"
calibrate_then_hybrid &
calibration=$!
STAGE=eval NAME=$(basename "$HEAD") OUT=$OUT RUN=$RUN PYTHON=$PY bash bench/results/2026-12-03-c2800/run.sh
for set in mtbench humaneval; do
  [ -f "$CHECKS/dspark-$set.json" ] || "$PY" -m engine.spec.training.cli eval-draft \
    --draft-model "$HEAD" --drafter head --data "$set:80" --whole-eval-sets \
    --max-new-tokens 96 --temperatures 0 1 --dtype float32 --threads 1 --no-progress --records \
    --report "$CHECKS/dspark-$set.json" > /dev/null
done
wait "$calibration"
cp "$CANDIDATE/calibration-report.json" "$OUT/calibration-report.json"
"$PY" -m engine.spec.training.scripts.calibration_methods table \
  --check "$CHECKS"/dspark-{mtbench,humaneval}.json --checkpoint "$CANDIDATE" > "$OUT/dspark-whole-sets.md"
