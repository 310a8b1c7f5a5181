#!/usr/bin/env bash
# Issue 13, phase 7: DSpark trained on a third time, from phase 6's
# 597,764-anchor run (runs/heads-smollm2/dspark-continued), with a new data
# order (TRAIN_SEED=1: new anchors instead of phase 6's replay of the first
# run's), the same schedule as phase 6 (298,520 more anchors, lr 3e-4 after
# 100 warm-up steps, cosine, bfloat16 autocast, one thread; 59 minutes),
# then evaluated as phases 5 and 6 evaluated theirs (8 prompts per set, 96
# tokens, T=0 and T=1, every draft of 7 verified) and tabulated beside
# them. From the repository root; DATA_PACKAGES as in smollm2-heads.sh.
set -euo pipefail
OUT=bench/results/2026-12-02-stage3
RUN=${RUN:-$PWD/runs/heads-smollm2}  # absolute: the scripts run from a snapshot
PY=${PYTHON:-python}
TRAIN_TOKENS=305000 EVAL_EVERY=600 PRECISION=bf16 LR=3e-4 WARMUP_STEPS=100 TRAIN_SEED=1 \
  INIT_FROM="$RUN/dspark-continued" CONTINUED_NAME=dspark-stage3-seed1 PYTHON=$PY \
  nice -n 10 bash engine/spec/training/scripts/smollm2-heads.sh continue dspark "$RUN"
PROMPTS=8 COMPARE=0 PYTHON=$PY engine/spec/training/scripts/smollm2-heads-eval.sh "$RUN" dspark-stage3-seed1
cp "$RUN"/eval/dspark-stage3-seed1-*.json "$OUT/"
cp "$RUN/dspark-stage3-seed1/log.jsonl" "$OUT/dspark-stage3-seed1-log.jsonl"
cp "$RUN/dspark-stage3-seed1/report.json" "$OUT/dspark-stage3-seed1-report.json"
mkdir -p "$RUN/eval-phase7" && cp "$RUN"/eval-phase6/*.json "$OUT"/dspark-stage3-seed1-{mtbench,humaneval,sharegpt}.json "$RUN/eval-phase7/"
"$PY" -m engine.spec.training.scripts.heads_table "$RUN/eval-phase7" > "$OUT/heads-table.md"
"$PY" -m engine.spec.training.scripts.plot_tau checkpoints/eagle3-smollm2+"$RUN/eagle3-continued" "$RUN/dflash" \
  checkpoints/dspark-smollm2+"$RUN/dspark-continued"+"$RUN/dspark-stage3-seed1" --out docs/heads-tau.png
