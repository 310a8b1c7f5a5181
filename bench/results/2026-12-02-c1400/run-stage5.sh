#!/usr/bin/env bash
# Issue 13, phase 8, second step: DSpark trained on from run.sh's head
# (runs/heads-smollm2/dspark-c1400, 1,092,743 anchors) on the same
# 1,400-conversation data with a new data order (TRAIN_SEED=3) and the same
# schedule (200,000 more anchors, lr 3e-4 after 100 warm-up steps, cosine,
# bfloat16 autocast, one thread), evaluated and tabulated as run.sh does
# (its table then holds both steps). From the repository root, after
# run.sh; DATA_PACKAGES as in smollm2-heads.sh.
set -euo pipefail
NAME=dspark-c1400-stage5 FROM=dspark-c1400 SEED=3 EVERY=800 bash "$(dirname "$0")/run.sh"
