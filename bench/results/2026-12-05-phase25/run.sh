#!/usr/bin/env bash
# Issue 13, phase 25: new conversations for the DSpark head. Phases 22-24
# drew 4.7M anchors from the 5,600-conversation data's trainable positions
# (each seen about 1.6 times) and the last 1.18M bought +0.017 HumanEval
# tau on the whole set, where phases 22 and 23's first passes over new data
# bought +0.034 and +0.047 per ~0.75M. So: the 2,400 train-split ShareGPT
# conversations after those 5,600 (--skip-conversations; the split holds
# 9,989), teacher-forced in bfloat16 on two threads into a new folder, then
# the committed head (4,699,963 anchors, phase 24) trained on by TRAIN_TOKENS
# more anchors of them (600,000: ~50 min on two threads at 0.68 s a step), TRAIN_SEED=12,
# then phase 19's checks. Phase 20's rerun run.sh and phase 18's data stage
# with this run's name, folder, data and budget. From the repository root;
# DATA_PACKAGES as in smollm2-heads.sh.
#
#   STAGE=data  bash bench/results/2026-12-05-phase25/run.sh   # two cores, ~50 min
#   STAGE=train bash bench/results/2026-12-05-phase25/run.sh   # two cores, ~50 min, resumable
#   STAGE=check bash bench/results/2026-12-05-phase25/run.sh   # two cores, ~25 min
#
# A later run sets CONVERSATIONS, SKIP_CONVERSATIONS, DATA_DIR, NAME, OUT,
# TRAIN_SEED and TRAIN_TOKENS (phase 26's run.sh).
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
export CONVERSATIONS=${CONVERSATIONS:-2400} SKIP_CONVERSATIONS=${SKIP_CONVERSATIONS:-5600}
DATA_DIR=${DATA_DIR:-$RUN/data-c5600-8000-bf16}
case "${STAGE:?data, train or check}" in
  data)
    STAGE=data DATA_DIR=$DATA_DIR DTYPE=bfloat16 RUN=$RUN DATA_THREADS=2 \
      PYTHON=${PYTHON:-$PWD/.venv/bin/python} exec bash bench/results/2026-12-03-c2800/run.sh ;;
  train|check)
    NAME=${NAME:-dspark-c8000-1} OUT=${OUT:-bench/results/2026-12-05-phase25} TRAIN_SEED=${TRAIN_SEED:-12} TRAIN_THREADS=2 \
      DATA_DIR=$DATA_DIR RUN=$RUN TRAIN_TOKENS=${TRAIN_TOKENS:-600000} EVAL_EVERY=0 \
      exec bash bench/results/2026-12-04-rerun/run.sh ;;
  *) echo "STAGE: data, train or check" >&2; exit 2 ;;
esac
