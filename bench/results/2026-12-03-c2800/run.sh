#!/usr/bin/env bash
# Issue 13, phase 18: a long DSpark run toward the tau targets, on CPU (a
# lent GPU cannot take the target: docs/draft-heads.md, phase 18). From the
# committed 299k-anchor head, on 2,800 ShareGPT conversations (four times the
# committed head's data), the draft vocabulary kept, a new data order
# (TRAIN_SEED=4), lr 3e-4 after 100 warm-up steps, cosine over
# TRAIN_TOKENS more anchors (1,000,000 by default: ~3 hours on one core),
# bfloat16 autocast, one thread. Resumable: rerun the same stage after an
# interruption (a new session on the same host); a new host has to extract
# the data again. From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh.
#
#   STAGE=data  bash bench/results/2026-12-03-c2800/run.sh   # ~75 min on two cores
#   STAGE=train bash bench/results/2026-12-03-c2800/run.sh   # one core, resumable
#   STAGE=eval  bash bench/results/2026-12-03-c2800/run.sh   # tau table beside the committed heads'
#
# Later runs reuse it with their own NAME, OUT, DATA_DIR, DTYPE, TRAIN_SEED,
# TRAIN_TOKENS and CONVERSATIONS (unset: this run's), e.g. phase 19's run.sh.
set -euo pipefail
OUT=${OUT:-bench/results/2026-12-03-c2800}
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the scripts run from a snapshot
PY=${PYTHON:-python}
NAME=${NAME:-dspark-c2800}
export CONVERSATIONS=${CONVERSATIONS:-2800} DATA_DIR="${DATA_DIR:-$RUN/data-c2800}" DTYPE=${DTYPE:-float32} PYTHON=$PY
case "${STAGE:?data, train or eval}" in
  data)
    nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh data "$RUN" ;;
  train)
    TRAIN_TOKENS=${TRAIN_TOKENS:-1000000} EVAL_EVERY=${EVAL_EVERY:-600} PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=${TRAIN_SEED:-4} \
      CONTINUED_NAME=$NAME nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN" ;;
  eval)
    PROMPTS=8 COMPARE=0 engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" $NAME
    cp "$RUN"/eval/$NAME-*.json "$RUN/$NAME/log.jsonl" "$OUT/"
    cp "$RUN/$NAME/report.json" "$OUT/$NAME-report.json" ;;
  *) echo "STAGE: data, train or eval" >&2; exit 2 ;;
esac
