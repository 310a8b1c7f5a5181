#!/usr/bin/env bash
# Issue 13, after phase 21: phases 19-21 drew 1.76M anchors from the
# 1,468,037 trainable positions of 2,800 ShareGPT conversations, and each
# anchor buys less, so the next DSpark run trains on twice the
# conversations. This is phase 19's data stage (bfloat16 target, its
# batch-free kernels, two processes) on 5,600 conversations into a new
# folder; phase 21's run.sh trains on it with DATA_DIR set to that folder
# (it keeps the committed head's draft vocabulary). Started at the end of
# the twenty-fourth session (about an hour on two cores), not yet checked.
# From the repository root; DATA_PACKAGES as in smollm2-heads.sh.
#
#   bash bench/results/2026-12-04-c5600-data/run.sh
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
STAGE=data CONVERSATIONS=5600 DATA_DIR="$RUN/data-c5600-bf16" DTYPE=bfloat16 RUN=$RUN \
  exec bash bench/results/2026-12-03-c2800/run.sh
