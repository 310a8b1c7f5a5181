#!/usr/bin/env bash
# Issue 13, phase 6: EAGLE-3 and DSpark trained on from their committed
# 298,882-anchor checkpoints (train-draft --init-from: weights, a fresh
# AdamW, lr 3e-4 after 100 warm-up steps, cosine over 2,383 more steps of
# 4 x 32 anchors, bfloat16 autocast on this avx512_bf16 host, one thread
# each, the two side by side), then evaluated as phase 5 evaluated the
# committed heads (8 prompts per set, 96 tokens, T=0 and T=1, every draft of
# 7 verified) and DSpark recalibrated on 149 held-out sequences with
# `logistic` and with `logistic-peak` (the same halves, so the two checks
# compare). From the repository root; DATA_PACKAGES as in smollm2-heads.sh.
set -euo pipefail
OUT=bench/results/2026-12-02-continued
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the eval script runs from a snapshot
PY=${PYTHON:-python}
for head in dspark eagle3; do  # about 90 minutes each, side by side
  TRAIN_TOKENS=305000 EVAL_EVERY=800 PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 PYTHON=$PY \
    nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue $head "$RUN" &
done
wait
PROMPTS=8 COMPARE=0 PYTHON=$PY engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" dspark-continued eagle3-continued
mkdir -p "$OUT"
cp "$RUN"/eval/{dspark,eagle3}-continued-*.json "$OUT/"
for method in logistic logistic-peak; do
  PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1 "$PY" -m engine.spec.training.cli calibrate-draft \
    --draft-model "$RUN/dspark-continued" --out "$RUN/dspark-continued-$method" --work-dir runs/calib-data \
    --dtype float32 --heldout-data sharegpt:160 --max-new-tokens 256 --gen-batch 32 --calibration-tokens 128 \
    --calibration $method --seed 0 --threads 1 &
done
wait
for method in logistic logistic-peak; do
  cp "$RUN/dspark-continued-$method/calibration-report.json" "$OUT/dspark-calibration-$method.json"
done
# the table: these reports beside phase 5's (bench/results/2026-12-01-dflash-299k)
mkdir -p "$RUN/eval-phase6" && cp bench/results/2026-12-01-dflash-299k/*.json "$OUT"/*-continued-*.json "$RUN/eval-phase6/"
"$PY" -m engine.spec.training.scripts.heads_table "$RUN/eval-phase6" > "$OUT/heads-table.md"
"$PY" -m engine.spec.training.scripts.plot_tau checkpoints/eagle3-smollm2+"$RUN/eagle3-continued" \
  runs/heads-smollm2/dflash checkpoints/dspark-smollm2+"$RUN/dspark-continued" --out docs/heads-tau.png
