#!/usr/bin/env bash
# Issue 13, phase 20: DSpark trained on from the 543k head committed in
# phase 19 to 1,225,769 anchors (5,469 steps, TRAIN_SEED=6), on phase 19's
# bfloat16 data (bench/results/2026-12-03-bf16-data/run.sh STAGE=data
# first), then checked as phase 19's head was. Resumable: started with
# TRAIN_TOKENS=1000000 in the twenty-first session (800 steps), resumed
# in the twenty-second with TRAIN_TOKENS=700000 (the cosine schedule's
# length shortened to 5,469 steps at step 800, where the learning rate
# was still near its peak). One core for training; checks.sh two cores.
# Its head was lost with the host before it was committed (runs/ is
# git-ignored): these files are its measurements; the head committed in
# phase 20 is bench/results/2026-12-04-rerun's.
set -euo pipefail
# The rerun's stages with this run's name, seed, budget and evaluations
# (train without STAGE, as it was run; anything else: the checks).
[ "${STAGE:-train}" = train ] || STAGE=check
STAGE=${STAGE:-train} NAME=dspark-bf16data-2 OUT=bench/results/2026-12-04-trained-on TRAIN_SEED=6 \
  TRAIN_TOKENS=${TRAIN_TOKENS:-700000} EVAL_EVERY=600 exec bash bench/results/2026-12-04-rerun/run.sh
