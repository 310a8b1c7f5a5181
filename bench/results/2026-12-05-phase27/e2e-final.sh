#!/usr/bin/env bash
# Issue 13, phase 27, as committed: one stream, end to end, off, n-gram +
# datastore (serve's default), the hybrid and the DSpark head alone; phase
# 21's lockstep comparison (8 prompts of 96 tokens per set). From the
# repository root; SETS picks the sets (two at once on the two cores:
# SETS=mt-bench and SETS=humaneval). The results in e2e-final/ ran at
# 739b0f0 (before the hybrid's streak-amortized backlog charge, 7416ae4).
#
#   ROUNDS=5 SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e-final.sh   # ~12 min a set
set -euo pipefail
OUT=bench/results/2026-12-05-phase27/e2e-final
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES}
for set in ${SETS:-humaneval mt-bench}; do
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods ${METHODS:-off,ngram-ds,hybrid-ds,dspark} --out $OUT/$set > $OUT/$set/log.txt 2>&1
done
