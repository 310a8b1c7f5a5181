#!/usr/bin/env bash
# Issue 13, phase 22: the committed DSpark head (2,055,525 anchors, phase
# 21) trained on by 700,000 more anchors on twice the conversations: 5,600
# ShareGPT conversations (bench/results/2026-12-04-c5600-data/run.sh
# first), because phases 19-21 drew 1.76M anchors from the 1.47M trainable
# positions of 2,800 and each anchor bought less. A data order no earlier
# run used (TRAIN_SEED=9), two threads, then phase 19's checks. Phase 20's
# rerun run.sh with this run's name, folder, data, seed, budget and
# threads; it packs each stage's head into this folder (trained/,
# calibrated/). From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh.
#
#   STAGE=train bash bench/results/2026-12-04-phase22/run.sh   # two cores, ~60 min, resumable
#   STAGE=check bash bench/results/2026-12-04-phase22/run.sh   # two cores, ~22 min
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
# Phases 23 and 24's run.sh call this one with their own NAME, OUT, seed and budget.
NAME=${NAME:-dspark-c5600-1} OUT=${OUT:-bench/results/2026-12-04-phase22} TRAIN_SEED=${TRAIN_SEED:-9} TRAIN_THREADS=2 \
  DATA_DIR=$RUN/data-c5600-bf16 CONVERSATIONS=5600 RUN=$RUN \
  TRAIN_TOKENS=${TRAIN_TOKENS:-700000} EVAL_EVERY=${EVAL_EVERY:-0} \
  exec bash bench/results/2026-12-04-rerun/run.sh
