#!/usr/bin/env bash
# n-gram drafting from the better of prompt lookup and the datastore, by
# fitted survival rates (docs/draft-heads.md, "Phase 12"). From anywhere in
# the repository; DATA_PACKAGES as in smollm2-heads.sh (ShareGPT); PYTHON the
# interpreter; RUN the scratch folder; STORES the datastores to fit beside
# the shipped one (default: phase 12's x2 and x4, built by
# STAGE=build bash bench/results/2026-12-02-self-replies-more/run.sh);
# CANDIDATE the mapped one compared end to end (default: the shipped one,
# mapped: the same counts, so the comparison isolates the choice).
#   STAGE=fit-data  the target's greedy float32 replies to 300 ShareGPT
#                   test-split prompts (the fit's text; ~12 min on one core)
#   STAGE=fit       the survival maps of the shipped datastore as of c63b799
#                   (ShareGPT + 4,450 replies) and of STORES, written into
#                   copies RUN/mapped-NAME
#   STAGE=replay    tokens per target step over phase 9's greedy outputs:
#                   each datastore, lookup else datastore and the better block
#   STAGE=lockstep  one stream, lockstep, 5 rounds per set (code and chat in
#                   parallel): off, n-gram + the shipped datastore without a
#                   map (lookup else datastore, as served until now), the
#                   same again (A/A), n-gram + CANDIDATE
#   STAGE=lockstep-reversed  the same, engines built in the other order
#   STAGE=load      8 and 32 streams, 3 interleaved rounds: off, the shipped
#                   datastore without a map, CANDIDATE
#   STAGE=load-chat chat again at 8 and 32 streams, 3 interleaved rounds:
#                   off and n-gram + the shipped (mapped) datastore alone
#   STAGE=hybrid    one stream, lockstep, 5 rounds per set: off, n-gram + the
#                   shipped (mapped) datastore, the same again (A/A), and the
#                   hybrid + that datastore (its n-gram half drafts the better
#                   block too), engines built in that order
set -euo pipefail
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-datastore-choice
RUN=${RUN:-runs/datastore-choice}
STORES=${STORES:-runs/self-replies-more/smollm2-self-x2.safetensors runs/self-replies-more/smollm2-self-x4.safetensors}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
REPLAY=bench/results/2026-12-02-datastore/replay
UNMAPPED=$RUN/shipped-c63b799.safetensors
CANDIDATE=${CANDIDATE:-$RUN/mapped-shipped-c63b799.safetensors}
mkdir -p "$RUN"
case ${STAGE:?STAGE=fit-data, fit, replay, lockstep, lockstep-reversed, load, load-chat or hybrid} in
fit-data)
  "$PY" -m tools.fit_datastore_confidence generate 300 "$RUN/sharegpt-test.jsonl" ;;
fit)
  git show c63b799:engine/spec/datastores/smollm2.safetensors > "$UNMAPPED"
  for store in "$UNMAPPED" $STORES; do
    mapped=$RUN/mapped-$(basename "$store")
    cp "$store" "$mapped"
    echo "== $(basename "$store")"
    "$PY" -m tools.fit_datastore_confidence fit "$mapped" "$RUN/sharegpt-test.jsonl" --write
  done > "$OUT/fit.txt" ;;
replay)
  for set in humaneval mt-bench; do
    for mapped in "$RUN"/mapped-*.safetensors; do
      echo "== $set $(basename "$mapped")"
      "$PY" -m tools.datastore_replay replay "$REPLAY/$set-40.json" --datastore "$mapped"
    done
  done > "$OUT/replay.txt" ;;
lockstep|lockstep-reversed)
  git show c63b799:engine/spec/datastores/smollm2.safetensors > "$UNMAPPED"
  METHODS=off,ngram-ds,ngram-ds-again,ngram-ds-candidate SUFFIX=
  [ "$STAGE" = lockstep ] || METHODS=off,ngram-ds-candidate,ngram-ds-again,ngram-ds SUFFIX=-reversed
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-c1$SUFFIX"
    "$PY" -m tools.engine_ab $set 1 5 --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
      --methods $METHODS --datastore "$UNMAPPED" --candidate-datastore "$CANDIDATE" \
      --out "$OUT/$set-c1$SUFFIX" > "$OUT/$set-c1$SUFFIX/log.txt" 2>&1 &
  done
  wait_all ;;
load)
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-load"
    "$PY" -m tools.engine_ab $set 8,32 3 --prompts 64 --max-tokens 64 --methods off,ngram-ds-candidate,ngram-ds \
      --datastore "$UNMAPPED" --candidate-datastore "$CANDIDATE" --out "$OUT/$set-load" \
      > "$OUT/$set-load/log.txt" 2>&1 &
  done
  wait_all ;;
load-chat)
  mkdir -p "$OUT/mt-bench-load-again"
  "$PY" -m tools.engine_ab mt-bench 8,32 3 --prompts 64 --max-tokens 64 --methods off,ngram-ds \
    --out "$OUT/mt-bench-load-again" > "$OUT/mt-bench-load-again/log.txt" 2>&1 ;;
hybrid)
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-hybrid"
    "$PY" -m tools.engine_ab $set 1 5 --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
      --methods off,ngram-ds,ngram-ds-again,hybrid-ds --out "$OUT/$set-hybrid" > "$OUT/$set-hybrid/log.txt" 2>&1 &
  done
  wait_all ;;
esac
