#!/usr/bin/env bash
# Issue 13, phase 8, second step: DSpark trained on from run.sh's head
# (runs/heads-smollm2/dspark-c1400, 1,092,743 anchors) on the same
# 1,400-conversation data with a new data order (TRAIN_SEED=3) and the same
# schedule (200,000 more anchors, lr 3e-4 after 100 warm-up steps, cosine,
# bfloat16 autocast, one thread), evaluated and tabulated as run.sh does.
# From the repository root, after run.sh; DATA_PACKAGES as in smollm2-heads.sh.
set -euo pipefail
OUT=bench/results/2026-12-02-c1400
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the scripts run from a snapshot
PY=${PYTHON:-python}
NAME=dspark-c1400-stage5
TRAIN_TOKENS=200000 EVAL_EVERY=800 PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=3 \
  CONVERSATIONS=1400 DATA_DIR="$RUN/data-c1400" INIT_FROM="$RUN/dspark-c1400" CONTINUED_NAME=$NAME \
  PYTHON=$PY nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN"
PROMPTS=8 COMPARE=0 PYTHON=$PY engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" $NAME
cp "$RUN"/eval/$NAME-*.json "$OUT/"
cp "$RUN/$NAME/log.jsonl" "$OUT/$NAME-log.jsonl"
cp "$RUN/$NAME/report.json" "$OUT/$NAME-report.json"
cp "$OUT"/$NAME-{mtbench,humaneval,sharegpt}.json "$RUN/eval-phase8/"
"$PY" -m engine.spec.training.scripts.heads_table "$RUN/eval-phase8" > "$OUT/heads-table.md"
