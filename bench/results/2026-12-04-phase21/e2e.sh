#!/usr/bin/env bash
# Issue 13, phase 21: the committed head end to end after it was adopted,
# one stream, in process, lockstep (the engines take steps in turn, each
# timed alone), as phase 10 measured its parts: speculation off, n-gram +
# datastore, the hybrid + datastore, the DSpark head alone; ROUNDS
# interleaved rounds of 8 prompts of 96 tokens per set, ratios within each
# round (to off and to n-gram + datastore), then their median. One thread
# (the committed results ran beside the test suite on the other core,
# docs/draft-heads.md phase 21). From the repository root.
set -euo pipefail
OUT=${OUT:-bench/results/2026-12-04-phase21/e2e}  # later phases call this with their own (and METHODS)
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
for set in ${SETS:-humaneval mt-bench}; do  # SETS: later phases run one set per core
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-3} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods ${METHODS:-off,ngram-ds,hybrid-ds,dspark} --out $OUT/$set | tee $OUT/$set/log.txt
done
