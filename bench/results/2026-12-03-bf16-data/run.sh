#!/usr/bin/env bash
# Issue 13, phase 19: phase 18's run again on a new host, with the data
# extracted by the bfloat16 target on its batch-free kernels (the target as
# served, ~3x faster than float32: SmolLM2's teacher-forced pass runs at
# 1,117 tok/s on one thread against float32's 338-384), so that a session
# has time left to train after extracting. From the committed DSpark head,
# on 2,800 ShareGPT conversations, the draft vocabulary kept, a data order
# no earlier run used (TRAIN_SEED=5), lr 3e-4 after 100 warm-up steps,
# cosine over TRAIN_TOKENS more anchors (250,000 by default: ~40 min on one
# core), bfloat16 autocast, one thread. Resumable like phase 18's run.sh.
# From the repository root; DATA_PACKAGES as in smollm2-heads.sh.
#
#   STAGE=data  bash bench/results/2026-12-03-bf16-data/run.sh   # two cores, 34 min
#   STAGE=train bash bench/results/2026-12-03-bf16-data/run.sh   # one core, resumable
#   STAGE=eval  bash bench/results/2026-12-03-bf16-data/run.sh   # tau beside the committed head's
set -euo pipefail
OUT=bench/results/2026-12-03-bf16-data
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the scripts run from a snapshot
PY=${PYTHON:-python}
NAME=dspark-bf16data
export CONVERSATIONS=2800 DATA_DIR="$RUN/data-c2800-bf16" DTYPE=bfloat16 PYTHON=$PY
case "${STAGE:?data, train or eval}" in
  data)
    nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh data "$RUN" ;;
  train)
    TRAIN_TOKENS=${TRAIN_TOKENS:-250000} EVAL_EVERY=600 PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=5 \
      CONTINUED_NAME=$NAME nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN" ;;
  eval)
    PROMPTS=8 COMPARE=0 engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" $NAME
    cp "$RUN"/eval/$NAME-*.json "$RUN/$NAME/log.jsonl" "$OUT/"
    cp "$RUN/$NAME/report.json" "$OUT/$NAME-report.json" ;;
  *) echo "STAGE: data, train or eval" >&2; exit 2 ;;
esac
