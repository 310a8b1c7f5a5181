#!/usr/bin/env bash
# Issue 13, phase 21: the committed DSpark head (787,089 anchors, phase 20)
# trained on by 1,300,000 more anchors on phase 19's bfloat16 data
# (bench/results/2026-12-03-bf16-data/run.sh STAGE=data first), a data
# order no earlier run used (TRAIN_SEED=8), on two threads (the host had no
# other long job: 0.53-0.57 s a step against one thread's 0.72-1.00 s),
# then phase 19's checks. Phase 20's rerun run.sh with this run's name,
# folder, seed, budget and threads; it packs each stage's head into this
# folder (trained/, calibrated/). From the repository root; DATA_PACKAGES
# as in smollm2-heads.sh.
#
#   STAGE=train bash bench/results/2026-12-04-phase21/run.sh   # two cores, ~100 min, resumable
#   STAGE=check bash bench/results/2026-12-04-phase21/run.sh   # two cores, ~20 min
set -euo pipefail
NAME=dspark-bf16data-4 OUT=bench/results/2026-12-04-phase21 TRAIN_SEED=8 TRAIN_THREADS=2 \
  TRAIN_TOKENS=${TRAIN_TOKENS:-1300000} EVAL_EVERY=${EVAL_EVERY:-0} \
  exec bash bench/results/2026-12-04-rerun/run.sh
