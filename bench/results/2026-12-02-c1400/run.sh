#!/usr/bin/env bash
# Issue 13, phase 8: DSpark trained on a fourth time, from phase 7's
# 896,284-anchor run (runs/heads-smollm2/dspark-stage3-seed1), on more data:
# 1,400 ShareGPT conversations instead of 700 (the extra ones teacher-forced
# into RUN/data-c1400, the responses and held-out/eval sets the same as
# phase 7's), the draft vocabulary kept from the checkpoint, a new data
# order (TRAIN_SEED=2), lr 3e-4 after 100 warm-up steps, cosine over
# 200,000 more anchors, bfloat16 autocast, one thread; then evaluated as
# phases 5-7 evaluated theirs (8 prompts per set, 96 tokens, T=0 and T=1,
# every draft of 7 verified) and tabulated beside them. From the repository
# root; DATA_PACKAGES as in smollm2-heads.sh.
#
# The extra conversations (run once before; resumable):
#   python -m engine.spec.training.cli train-draft --method dspark --prepare-only \
#     --out RUN/data-c1400-only --work-dir RUN/data-c1400 --dtype float32 --data "" \
#     --heldout-data "" --eval-data "" --conversations 1400 --max-new-tokens 256 \
#     --max-prompt-tokens 512 --gen-batch 32 --max-len 1024 --top-k 20 --draft-vocab 16384 \
#     --no-progress --seed 0 --threads 2
# with RUN/data-c1400 first holding hard links of RUN/data's feature shards.
set -euo pipefail
OUT=bench/results/2026-12-02-c1400
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the scripts run from a snapshot
PY=${PYTHON:-python}
# run-stage5.sh runs this again from this run's head: NAME, FROM, SEED, EVERY.
NAME=${NAME:-dspark-c1400}
TRAIN_TOKENS=200000 EVAL_EVERY=${EVERY:-600} PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=${SEED:-2} \
  CONVERSATIONS=1400 DATA_DIR="$RUN/data-c1400" INIT_FROM="$RUN/${FROM:-dspark-stage3-seed1}" CONTINUED_NAME=$NAME \
  PYTHON=$PY nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN"
PROMPTS=8 COMPARE=0 PYTHON=$PY engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" $NAME
cp "$RUN"/eval/$NAME-*.json "$OUT/"
cp "$RUN/$NAME/log.jsonl" "$OUT/$NAME-log.jsonl"
cp "$RUN/$NAME/report.json" "$OUT/$NAME-report.json"
mkdir -p "$RUN/eval-phase8" && cp "$RUN"/eval-phase7/*.json "$OUT"/$NAME-{mtbench,humaneval,sharegpt}.json "$RUN/eval-phase8/"
"$PY" -m engine.spec.training.scripts.heads_table "$RUN/eval-phase8" > "$OUT/heads-table.md"
