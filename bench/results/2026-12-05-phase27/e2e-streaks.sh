#!/usr/bin/env bash
# Issue 13, phase 27: one stream, end to end, the hybrid charging a request's
# run its backlog folding over the mean streak of runs (hybrid-ds) beside the
# hybrid without the charge (hybrid-ds-backlog-free) and n-gram + datastore;
# phase 21's lockstep comparison (8 prompts of 96 tokens per set). From the
# repository root; SETS picks the sets (two at once on the two cores).
#
#   ROUNDS=5 SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e-streaks.sh   # ~8 min a set
set -euo pipefail
OUT=bench/results/2026-12-05-phase27/e2e-streaks
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES}
for set in ${SETS:-humaneval mt-bench}; do
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods ${METHODS:-ngram-ds,hybrid-ds,hybrid-ds-backlog-free} --out $OUT/$set > $OUT/$set/log.txt 2>&1
done
