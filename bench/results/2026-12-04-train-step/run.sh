#!/usr/bin/env bash
# Training step time before (877fde5) and after this session's changes (the
# loss's exp and top-1, the fused AdamW update),
# interleaved, each side's engine on PYTHONPATH, the same head and
# features (one thread; phase 19's data from
# bench/results/2026-12-03-bf16-data/run.sh STAGE=data).
# BASE: a checkout of the code before (git worktree add /tmp/base 877fde5).
set -euo pipefail
BASE=${BASE:-/tmp/base}
PYTHON=${PYTHON:-.venv/bin/python}
FEATURES=${FEATURES:-runs/heads-smollm2/data-c2800-bf16/features-train-conversations}
ROUNDS=${ROUNDS:-3}
for round in $(seq "$ROUNDS"); do
  for side in before after; do
    root=$([ "$side" = before ] && echo "$BASE" || echo "$PWD")
    echo "$side $(PYTHONPATH=$root "$PYTHON" tools/train_step_speed.py --head checkpoints/dspark-smollm2 \
      --features "$FEATURES" --steps 12 2>/dev/null | tail -1)"
  done
done
