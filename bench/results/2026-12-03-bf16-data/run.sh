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
RUN=${RUN:-$PWD/runs/heads-smollm2}
# Phase 18's stages with this run's data, seed, budget and names.
OUT=bench/results/2026-12-03-bf16-data NAME=dspark-bf16data DATA_DIR="$RUN/data-c2800-bf16" DTYPE=bfloat16 \
  TRAIN_SEED=5 TRAIN_TOKENS=${TRAIN_TOKENS:-250000} RUN=$RUN exec bash bench/results/2026-12-03-c2800/run.sh
