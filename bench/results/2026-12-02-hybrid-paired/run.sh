#!/usr/bin/env bash
# The hybrid against its parts at one stream, in lockstep
# (docs/draft-heads.md, "Phase 10"): in-process engines sharing one model,
# taking engine steps in turn, each step timed alone, 5 rounds; ratios taken
# within each round, then their median. hybrid-ds-nohead is the hybrid with
# its head never run: n-gram + datastore plus what the hybrid costs by itself.
#   bash bench/results/2026-12-02-hybrid-paired/run.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-hybrid-paired
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
for set in humaneval mt-bench; do
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods off,ngram-ds,hybrid-ds,hybrid-ds-nohead,dspark --out $OUT/$set | tee $OUT/$set/log.txt
done
