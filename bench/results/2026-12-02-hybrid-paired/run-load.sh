#!/usr/bin/env bash
# The final hybrid under load (8 and 32 streams, chat), after phase 10's
# economics changes: in-process engines, 3 interleaved rounds, steady
# aggregate tok/s, as phase 9's load stage (hybrid built before n-gram).
#   bash bench/results/2026-12-02-hybrid-paired/run-load.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-hybrid-paired/load-chat
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
mkdir -p $OUT
$PY -m tools.engine_ab mt-bench 8,32 3 --prompts 64 --max-tokens 64 \
  --methods off,hybrid-ds,ngram-ds --out $OUT | tee $OUT/log.txt
