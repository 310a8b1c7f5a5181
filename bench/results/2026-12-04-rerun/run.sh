#!/usr/bin/env bash
# Issue 13, phase 20, second run: the first run's head (trained to
# 1,225,769 anchors, bench/results/2026-12-04-trained-on) was lost with its
# host before it was committed, so this session trains again from the 543k
# head committed in phase 19, on phase 19's bfloat16 data
# (bench/results/2026-12-03-bf16-data/run.sh STAGE=data first), with a
# budget that leaves the session time to check and commit the result:
# 250,000 anchors (TRAIN_SEED=7, lr 3e-4 after 100 warm-up steps, cosine,
# bfloat16 autocast, one core, held-out tau at the end only), then the
# checks of phase 19 on two cores. From the repository root; DATA_PACKAGES
# as in smollm2-heads.sh.
#
#   STAGE=train bash bench/results/2026-12-04-rerun/run.sh   # one core, ~35 min, resumable
#   STAGE=check bash bench/results/2026-12-04-rerun/run.sh   # two cores
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
PY=${PYTHON:-$PWD/.venv/bin/python}  # absolute: the scripts run from a code snapshot
case "${STAGE:?train or check}" in
  train)
    RUN=$RUN CONVERSATIONS=2800 DATA_DIR=$RUN/data-c2800-bf16 DTYPE=bfloat16 PYTHON=$PY \
      TRAIN_TOKENS=${TRAIN_TOKENS:-250000} EVAL_EVERY=0 PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=7 \
      CONTINUED_NAME=dspark-bf16data-3 nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN" ;;
  check)
    HEAD_DIR=$RUN/dspark-bf16data-3 OUT=bench/results/2026-12-04-rerun CHECKS=runs/calib-bf16data-3/whole \
      RUN=$RUN PYTHON=$PY bash bench/results/2026-12-03-bf16-data/checks.sh ;;
  *) echo "STAGE: train or check" >&2; exit 2 ;;
esac
