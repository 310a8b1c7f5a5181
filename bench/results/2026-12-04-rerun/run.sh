#!/usr/bin/env bash
# Issue 13, phase 20, second run: the first run's head (trained to
# 1,225,769 anchors, bench/results/2026-12-04-trained-on) was lost with its
# host before it was committed, so this session trains again from the 543k
# head committed in phase 19, on phase 19's bfloat16 data
# (bench/results/2026-12-03-bf16-data/run.sh STAGE=data first), with a
# budget that leaves the session time to check and commit the result:
# 250,000 anchors (TRAIN_SEED=7, lr 3e-4 after 100 warm-up steps, cosine,
# bfloat16 autocast, one core, held-out tau at the end only), then the
# checks of phase 19 on two cores. Each stage ends by xz-packing its head
# into OUT (trained/, calibrated/): the work tree is what a cut-off
# session recovers, runs/ is not. From the repository root; DATA_PACKAGES
# as in smollm2-heads.sh. The first run's run.sh calls this one with its
# own NAME, OUT, seed, budget and evaluation interval; DATA_DIR and
# CONVERSATIONS another data stage's (bench/results/2026-12-04-c5600-data).
#
#   STAGE=train bash bench/results/2026-12-04-rerun/run.sh   # one core, ~35 min, resumable
#   STAGE=check bash bench/results/2026-12-04-rerun/run.sh   # two cores
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
PY=${PYTHON:-$PWD/.venv/bin/python}  # absolute: the scripts run from a code snapshot
NAME=${NAME:-dspark-bf16data-3}
OUT=${OUT:-bench/results/2026-12-04-rerun}
pack() {  # HEAD_DIR DEST: the head's weights and config into the work tree
  mkdir -p "$2"
  xz -9e -T1 -c "$1/model.safetensors" > "$2/model.safetensors.xz"
  cp "$1/config.json" "$2/"
}
case "${STAGE:?train or check}" in
  train)
    # Phase 18's training stage (lr, warm-up, precision) on phase 19's data.
    STAGE=train RUN=$RUN NAME=$NAME DATA_DIR=${DATA_DIR:-$RUN/data-c2800-bf16} DTYPE=bfloat16 PYTHON=$PY \
      TRAIN_TOKENS=${TRAIN_TOKENS:-250000} EVAL_EVERY=${EVAL_EVERY:-0} TRAIN_SEED=${TRAIN_SEED:-7} \
      bash bench/results/2026-12-03-c2800/run.sh
    pack "$RUN/$NAME" "$OUT/trained" ;;
  check)
    HEAD_DIR=$RUN/$NAME OUT=$OUT CHECKS=runs/calib-${NAME#dspark-}/whole \
      RUN=$RUN PYTHON=$PY bash bench/results/2026-12-03-bf16-data/checks.sh
    pack "$RUN/$NAME-calibrated" "$OUT/calibrated" ;;
  *) echo "STAGE: train or check" >&2; exit 2 ;;
esac
