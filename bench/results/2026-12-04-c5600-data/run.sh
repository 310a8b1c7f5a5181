#!/usr/bin/env bash
# Issue 13, after phase 21: phases 19-21 drew 1.76M anchors from the
# 1,468,037 trainable positions of 2,800 ShareGPT conversations, and each
# anchor buys less, so the next DSpark run trains on twice the
# conversations. This is phase 19's data stage (bfloat16 target, its
# batch-free kernels) on 5,600 conversations into a new folder; phase 22's
# run.sh trains on it (it keeps the committed head's draft vocabulary).
#
# The first 2,800 conversations' features are phase 19's: the feature cache
# grows a complete prefix (engine/spec/training/features.py), so when
# phase 19's folder is on this host its files seed the new one (shards
# hard-linked, they are never rewritten; indexes copied) and only the
# conversations after them are computed (~30 min on two threads, against
# ~1 h from nothing). From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh.
#
#   bash bench/results/2026-12-04-c5600-data/run.sh
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
NEW=$RUN/data-c5600-bf16 OLD=$RUN/data-c2800-bf16
if [ -d "$OLD/features-train-conversations" ] && [ ! -d "$NEW" ]; then
  mkdir -p "$NEW"
  for dir in "$OLD"/features-*; do
    mkdir "$NEW/$(basename "$dir")"
    ln "$dir"/*.safetensors "$NEW/$(basename "$dir")/"
    cp "$dir"/*.json "$NEW/$(basename "$dir")/"
  done
  cp "$OLD"/responses-*.jsonl "$NEW/"
fi
# One process computes the conversations while the other finds the
# responses cached, so the conversations get both threads.
STAGE=data CONVERSATIONS=5600 DATA_DIR="$NEW" DTYPE=bfloat16 RUN=$RUN DATA_THREADS=${DATA_THREADS:-2} \
  exec bash bench/results/2026-12-03-c2800/run.sh
