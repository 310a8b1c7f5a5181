#!/usr/bin/env bash
# Calibration methods for the committed heads, out of sample (issue 13):
# fitted on 149 held-out ShareGPT test-split sequences, scored on MT-Bench and
# HumanEval (96 new tokens, float32), which no fit sees. The checks: their
# test-split prompts, 8 per set asked (9 and 15 exist; phase 4, HEAD.md), or
# with WHOLE=1 80 prompts of each whole set (eval-draft --whole-eval-sets;
# phase 5, HEAD-whole-sets.md), whose sampling floor is a third of the
# test split's. From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh. About 20 minutes per head on one core for the held-out
# records (the T=1 decode of 149 prompts dominates), as long again for the
# whole-set checks. PYTHON: the interpreter (default python); HEADS.
set -euo pipefail
OUT=bench/results/2026-12-01-calibration
RUN=${RUN:-runs/calib}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
if [ "${WHOLE:-0}" = 1 ]; then
  CHECKS=$RUN/whole PROMPTS=(80 --whole-eval-sets) SUFFIX=-whole-sets
else
  CHECKS=$RUN PROMPTS=(8) SUFFIX=
fi
mkdir -p "$CHECKS"
for head in ${HEADS:-dspark eagle3}; do
  for set in mtbench humaneval; do  # the heads' raw confidences as served (every draft of 7 verified)
    [ -f "$CHECKS/$head-$set.json" ] || "$PY" -m engine.spec.training.cli eval-draft \
      --draft-model checkpoints/$head-smollm2 --drafter head --data "$set:${PROMPTS[0]}" "${PROMPTS[@]:1}" \
      --max-new-tokens 96 --temperatures 0 1 --dtype float32 --threads 1 --no-progress --records \
      --report "$CHECKS/$head-$set.json" > /dev/null
  done
  [ -f "$RUN/$head-heldout-fit160.json" ] || "$PY" -m engine.spec.training.scripts.calibration_methods records \
    --draft-model checkpoints/$head-smollm2 --work-dir runs/calib-data --heldout-data sharegpt:160 \
    --dtype float32 --out "$RUN/$head-heldout-fit160.json"
  "$PY" -m engine.spec.training.scripts.calibration_methods table --fit "$RUN/$head-heldout-fit160.json" \
    --check "$CHECKS/$head-mtbench.json" "$CHECKS/$head-humaneval.json" --checkpoint checkpoints/$head-smollm2 \
    > "$OUT/$head$SUFFIX.md"
done
