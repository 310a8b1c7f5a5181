#!/usr/bin/env bash
# The corpus datastore with the target's own replies counted beside
# ShareGPT's (docs/draft-heads.md, "Phase 11"). From anywhere in the
# repository; DATA_PACKAGES as in smollm2-heads.sh (ShareGPT); PYTHON the
# interpreter; RUN the scratch folder (replies, candidate datastores).
#   STAGE=generate  the target's greedy float32 replies (192 tokens at most)
#                   to ShareGPT train-split prompts 0..4799 (FIRST..LAST-1
#                   if set), two processes
#                   over halves (about 65 minutes, one core each), then
#                   the two files concatenated
#   STAGE=build     datastores: ShareGPT as shipped + the replies x4 (the
#                   weight phase 9 chose), and x2 / x8 beside it
#   STAGE=replay    tokens per target step over phase 9's greedy outputs
#   STAGE=lockstep  one stream, lockstep, 5 rounds per set (code and chat in
#                   parallel, one core each): off, n-gram + the shipped
#                   datastore, the same again (A/A), n-gram + the candidate
#   STAGE=lockstep-reversed  the same with the engines built in the other
#                   order (engines built later run up to 4% slower, phase 10)
#   STAGE=load      8 and 32 streams, 3 interleaved rounds (code and chat in
#                   parallel): off, n-gram + the shipped (new) datastore, and
#                   n-gram + the ShareGPT-only one it replaced (from ab11f5e)
set -euo pipefail
# Each background job is waited for by its pid, so that a failed one stops the script.
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-self-replies
RUN=${RUN:-runs/self-replies}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
REPLAY=bench/results/2026-12-02-datastore/replay
COMMON=(--conversations 20000 --max-n 4 --min-count 4)
mkdir -p "$RUN"
case ${STAGE:?STAGE=generate, build, replay or lockstep} in
generate)
  FIRST=${FIRST:-0} LAST=${LAST:-4800}  # the prompt range, halved between the two processes
  MIDDLE=$(( (FIRST + LAST) / 2 ))
  "$PY" -m cli build-datastore "${COMMON[@]}" --generate $MIDDLE --generate-from $FIRST --gen-batch 64 \
    --max-new-tokens 192 --responses "$RUN/replies-a.jsonl" --out "$RUN/scratch-a.safetensors" &
  "$PY" -m cli build-datastore "${COMMON[@]}" --generate $LAST --generate-from $MIDDLE --gen-batch 64 \
    --max-new-tokens 192 --responses "$RUN/replies-b.jsonl" --out "$RUN/scratch-b.safetensors" &
  wait_all
  cat "$RUN/replies-a.jsonl" "$RUN/replies-b.jsonl" > "$RUN/replies.jsonl" ;;
build)
  for weight in 2 4 8; do
    "$PY" -m cli build-datastore "${COMMON[@]}" --responses "$RUN/replies.jsonl" \
      --responses-weight $weight --out "$RUN/smollm2-self-x$weight.safetensors"
  done ;;
replay)
  for set in humaneval mt-bench; do
    for store in engine/spec/datastores/smollm2.safetensors "$RUN"/smollm2-self-x{2,4,8}.safetensors; do
      echo "== $set $(basename "$store")"
      "$PY" -m tools.datastore_replay replay "$REPLAY/$set-40.json" --datastore "$store"
    done
  done > "$OUT/replay.txt" ;;
lockstep|lockstep-reversed)
  METHODS=off,ngram-ds,ngram-ds-again,ngram-ds-candidate SUFFIX=
  [ "$STAGE" = lockstep ] || METHODS=off,ngram-ds-candidate,ngram-ds-again,ngram-ds SUFFIX=-reversed
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-c1$SUFFIX"
    "$PY" -m tools.engine_ab $set 1 5 --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
      --methods $METHODS --candidate-datastore "$RUN/smollm2-self-x4.safetensors" \
      --out "$OUT/$set-c1$SUFFIX" > "$OUT/$set-c1$SUFFIX/log.txt" 2>&1 &
  done
  wait_all ;;
load)
  git show ab11f5e:engine/spec/datastores/smollm2.safetensors > "$RUN/smollm2-sharegpt-only.safetensors"
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-load"
    "$PY" -m tools.engine_ab $set 8,32 3 --prompts 64 --max-tokens 64 --methods off,ngram-ds-candidate,ngram-ds \
      --candidate-datastore "$RUN/smollm2-sharegpt-only.safetensors" --out "$OUT/$set-load" \
      > "$OUT/$set-load/log.txt" 2>&1 &
  done
  wait_all ;;
esac
