#!/usr/bin/env bash
# Issue 13, phase 26: the last unseen train-split ShareGPT conversations for
# the DSpark head. Phase 25 trained the head on the 2,400 after the first
# 5,600 and bought +0.066 pooled tau per million anchors, against 0.028 on
# conversations already seen; HumanEval's whole-set tau stayed 0.012 short
# of 1.7. The split holds 9,989 train conversations, so this run takes the
# 1,989 after the first 8,000 (bfloat16 target, two threads, a new folder),
# plus the target's own responses (256 tokens, T=0) to 400 train-split
# ShareGPT prompts whose reply holds code (RESPONSE_DATA: HumanEval is the
# short set, and a head learns the target's replies best from the target's
# own text; the 200 regenerated so far were 32% code),
# then the committed head (5,289,465 anchors) trained on by TRAIN_TOKENS
# more anchors of them (350,000 by default: ~31 min on two threads),
# TRAIN_SEED=13, then phase 19's checks with STS fitted on the code-heavier
# held-out set of code-calibration/run.sh: phase 25's run.sh with this run's
# conversations, folder, name and seed. From the repository root;
# DATA_PACKAGES as in smollm2-heads.sh.
#
#   STAGE=data  bash bench/results/2026-12-05-phase26/run.sh   # two cores, ~45 min
#   STAGE=train bash bench/results/2026-12-05-phase26/run.sh   # two cores, resumable
#   STAGE=check bash bench/results/2026-12-05-phase26/run.sh   # two cores, ~28 min
set -euo pipefail
RUN=${RUN:-$PWD/runs/heads-smollm2}
export RESPONSE_DATA=sharegpt:200,sharegpt-code:400  # every stage: the data's fingerprint
# 259 prompts: 64 tokens each at T=1 (as many events as phase 25's 160 x 128,
# and the check's calibration core no longer the slower of its two).
export HELDOUT_DATA=sharegpt:160,sharegpt-code:160 CALIBRATION_DATA=runs/calib-data-code CALIBRATION_TOKENS=64
CONVERSATIONS=1989 SKIP_CONVERSATIONS=8000 DATA_DIR=$RUN/data-c8000-9989-bf16 \
  NAME=dspark-c9989-1 OUT=bench/results/2026-12-05-phase26 TRAIN_SEED=13 \
  TRAIN_TOKENS=${TRAIN_TOKENS:-350000} RUN=$RUN \
  exec bash bench/results/2026-12-05-phase25/run.sh
