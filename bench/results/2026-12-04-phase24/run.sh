#!/usr/bin/env bash
# Issue 13, phase 24: the committed DSpark head (3,524,240 anchors, phase
# 23) trained on by 1,200,000 more anchors on the 5,600-conversation data
# (phase 23: +0.040 pooled tau per million anchors; the whole-set targets
# ~1M anchors away), TRAIN_SEED=11, two threads, then phase 19's checks.
# About 2 hours of training: started at the end of one session, resumed in
# the next by rerunning the same command (train_state.pt every 50 steps,
# on the same host). Phase 22's run.sh with this run's name, folder, seed
# and budget. From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh.
#
#   STAGE=train bash bench/results/2026-12-04-phase24/run.sh   # two cores, ~2 h, resumable
#   STAGE=check bash bench/results/2026-12-04-phase24/run.sh   # two cores, ~25 min
set -euo pipefail
NAME=dspark-c5600-3 OUT=bench/results/2026-12-04-phase24 TRAIN_SEED=11 TRAIN_TOKENS=${TRAIN_TOKENS:-1200000} \
  exec bash bench/results/2026-12-04-phase22/run.sh
