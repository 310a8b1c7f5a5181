#!/usr/bin/env bash
# The hybrid against n-gram + datastore again after exploration backs off
# (engine/spec/hybrid.py, EXPLORE_EVERY_MAX): same lockstep runs as run.sh,
# without the ablation and the head alone.
#   bash bench/results/2026-12-02-hybrid-paired/run-backoff.sh
#   OUT=bench/results/2026-12-02-hybrid-paired/net-gain bash ...   # after the payoff counts net gains
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-bench/results/2026-12-02-hybrid-paired/backoff}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
for set in humaneval mt-bench; do
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods off,ngram-ds,hybrid-ds --out $OUT/$set | tee $OUT/$set/log.txt
done
