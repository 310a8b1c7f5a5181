#!/usr/bin/env bash
# The hybrid hands a chosen n-gram or datastore block to the policy raw, for
# the policy's own calibrator, instead of as its per-source maps calibrated
# it (docs/draft-heads.md, "Phase 15"). Under load: the `-hybrid-map` runs of
# bench/results/2026-12-03-load-lockstep/run.sh. Here one stream, lockstep,
# 5 rounds of 8 prompts of 96 tokens per set (code and chat in parallel):
# off, n-gram + datastore, the hybrid + datastore, and the hybrid with the
# old hand-over (`hybrid-ds-own-map`). From anywhere in the repository;
# DATA_PACKAGES as in smollm2-heads.sh (MT-Bench, HumanEval); PYTHON the
# interpreter.
#   STAGE=c1           engines built in that order
#   STAGE=c1-reversed  built in the reverse order
set -euo pipefail
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-03-hybrid-hand-over
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
case ${STAGE:?STAGE=c1 or c1-reversed} in
c1) methods=off,ngram-ds,hybrid-ds,hybrid-ds-own-map ;;
c1-reversed) methods=hybrid-ds-own-map,hybrid-ds,ngram-ds,off ;;
*) echo "unknown STAGE=$STAGE" >&2; exit 2 ;;
esac
for set in humaneval mt-bench; do
  mkdir -p "$OUT/$set-$STAGE"
  "$PY" -m tools.engine_ab "$set" 1 5 --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods "$methods" --out "$OUT/$set-$STAGE" > "$OUT/$set-$STAGE/log.txt" 2>&1 &
done
wait_all
