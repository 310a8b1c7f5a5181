#!/usr/bin/env bash
# More of the target's own replies in the corpus datastore (docs/draft-heads.md,
# "Phase 12"): ShareGPT train-split prompts 4,800..7,999 on top of phase 11's
# 0..4,799. From anywhere in the repository; DATA_PACKAGES as in
# smollm2-heads.sh (ShareGPT); PYTHON the interpreter; RUN the scratch folder;
# EARLIER phase 11's replies (runs/self-replies/replies.jsonl, made by
# STAGE=generate bash bench/results/2026-12-02-self-replies/run.sh).
#   STAGE=generate  greedy float32 replies (192 tokens at most) to prompts
#                   4800..7999, two processes over halves (50 min, one core
#                   each; the phase 11 script's generate stage over that
#                   range), then every reply so far in RUN/all.jsonl
#   STAGE=build     datastores over ShareGPT + every reply so far, x4 and x2
# Their survival maps, the replay and the end-to-end comparison:
# bench/results/2026-12-02-datastore-choice/run.sh.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
RUN=${RUN:-runs/self-replies-more}
EARLIER=${EARLIER:-runs/self-replies/replies.jsonl}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
COMMON=(--conversations 20000 --max-n 4 --min-count 4)
mkdir -p "$RUN"
case ${STAGE:?STAGE=generate or build} in
generate)
  STAGE=generate FIRST=4800 LAST=8000 RUN=$RUN bash bench/results/2026-12-02-self-replies/run.sh
  cat "$EARLIER" "$RUN/replies.jsonl" > "$RUN/all.jsonl" ;;
build)
  for weight in 2 4; do
    "$PY" -m cli build-datastore "${COMMON[@]}" --responses "$RUN/all.jsonl" \
      --responses-weight $weight --out "$RUN/smollm2-self-x$weight.safetensors"
  done ;;
esac
