#!/usr/bin/env bash
# Prompt lookup's confidences by how the matched suffix went on before
# (docs/draft-heads.md, "Phase 14"). From anywhere in the repository;
# DATA_PACKAGES as in smollm2-heads.sh (ShareGPT, MT-Bench, HumanEval);
# PYTHON the interpreter; RUN the scratch folder.
#   STAGE=fit       the target's greedy float32 replies to 300 ShareGPT
#                   test-split prompts (~11 min on one core; skipped if
#                   there), the fit on odd replies checked on even ones and
#                   the reverse, then the prior written from all of them
#   STAGE=replay    tokens per target step over phase 9's greedy outputs,
#                   blocks of 8 and 5: the better block with the prior by
#                   follower class and with the classes pooled
#   STAGE=lockstep  one stream, lockstep, 5 rounds per set (code and chat in
#                   parallel): off, n-gram + datastore, the same again (A/A),
#                   the same with the follower classes pooled
#   STAGE=lockstep-reversed  the same, engines built in the other order
#   STAGE=load      8 and 32 streams, lockstep, 4 rounds, 96 prompts of 64
#                   tokens (code and chat in parallel): off, n-gram +
#                   datastore, the same with the classes pooled
set -euo pipefail
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-03-ngram-followers
RUN=${RUN:-runs/datastore-choice}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
REPLAY=bench/results/2026-12-02-datastore/replay
FIT=$RUN/sharegpt-test.jsonl
mkdir -p "$RUN"
lockstep() {  # $1: output suffix, $2: methods, $3: concurrencies and rounds and options
  for set in humaneval mt-bench; do
    mkdir -p "$OUT/$set-$1"
    # shellcheck disable=SC2086  # $3 is the concurrencies, rounds and options
    "$PY" -m tools.engine_ab "$set" $3 --lockstep --versus ngram-ds --methods "$2" \
      --out "$OUT/$set-$1" > "$OUT/$set-$1/log.txt" 2>&1 &
  done
  wait_all
}
case ${STAGE:?STAGE=fit, replay, lockstep, lockstep-reversed or load} in
fit)
  [ -s "$FIT" ] || "$PY" -m tools.fit_datastore_confidence generate 300 "$FIT"
  awk 'NR % 2 == 1' "$FIT" > "$RUN/odd.jsonl"
  awk 'NR % 2 == 0' "$FIT" > "$RUN/even.jsonl"
  { "$PY" -m tools.fit_ngram_confidence "$RUN/odd.jsonl" --check "$RUN/even.jsonl"
    "$PY" -m tools.fit_ngram_confidence "$RUN/even.jsonl" --check "$RUN/odd.jsonl"
    "$PY" -m tools.fit_ngram_confidence "$FIT" --out engine/spec/ngram_prior.py; } > "$OUT/fit.txt" ;;
replay)
  for set in humaneval mt-bench; do
    for block in 8 5; do
      echo "== $set, block $block"
      "$PY" -m tools.datastore_replay replay "$REPLAY/$set-40.json" --block "$block"
    done
  done > "$OUT/replay.txt" ;;
lockstep)
  lockstep c1 off,ngram-ds,ngram-ds-again,ngram-ds-pooled-prior "1 5 --prompts 8 --max-tokens 96" ;;
lockstep-reversed)
  lockstep c1-reversed ngram-ds-pooled-prior,ngram-ds-again,ngram-ds,off "1 5 --prompts 8 --max-tokens 96" ;;
load)
  lockstep load off,ngram-ds,ngram-ds-pooled-prior "8,32 4 --prompts 96 --max-tokens 64" ;;
*) echo "unknown STAGE=$STAGE" >&2; exit 2 ;;
esac
