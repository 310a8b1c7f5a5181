#!/usr/bin/env bash
# Issue 13, phase 23: the committed DSpark head (2,741,361 anchors, phase
# 22) trained on by 800,000 more anchors on the same 5,600 ShareGPT
# conversations (bench/results/2026-12-04-c5600-data/run.sh), where phase
# 22 measured +0.066 pooled tau per million anchors. A data order no
# earlier run used (TRAIN_SEED=10), two threads, then phase 19's checks.
# Phase 22's run.sh (phase 20's rerun run.sh on the 5,600-conversation
# data, two threads) with this run's name, folder, seed and budget; it
# packs each stage's head into this folder (trained/, calibrated/). From
# the repository root; DATA_PACKAGES as in smollm2-heads.sh.
#
#   STAGE=train bash bench/results/2026-12-04-phase23/run.sh   # two cores, ~90 min, resumable
#   STAGE=check bash bench/results/2026-12-04-phase23/run.sh   # two cores, ~35 min
set -euo pipefail
NAME=dspark-c5600-2 OUT=bench/results/2026-12-04-phase23 TRAIN_SEED=10 TRAIN_TOKENS=${TRAIN_TOKENS:-800000} \
  exec bash bench/results/2026-12-04-phase22/run.sh
