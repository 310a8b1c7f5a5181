#!/usr/bin/env bash
# Corpus datastore drafting (docs/draft-heads.md, "Phase 9"): in-process
# engines sharing one model, interleaved rounds, medians, ratio to `off`.
# ngram-ds / hybrid-ds: n-gram / the hybrid drafting from
# engine/spec/datastores/smollm2.safetensors where prompt lookup finds nothing.
#   bash bench/results/2026-12-02-datastore/run.sh          # one stream, then 8 and 32 streams
#   STAGE=c1 bash ... / STAGE=load bash ...                # one of the two
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-datastore
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
if [ "${STAGE:-all}" != load ]; then
  for set in humaneval mt-bench; do
    $PY -m tools.engine_ab $set 1 3 --prompts 8 --max-tokens 96 \
      --methods off,ngram,ngram-ds,hybrid,hybrid-ds --out $OUT/$set-c1 | tee $OUT/$set-c1/log.txt
  done
fi
if [ "${STAGE:-all}" != c1 ]; then
  for set in mt-bench humaneval; do
    mkdir -p $OUT/$set-load
    $PY -m tools.engine_ab $set 8,32 3 --prompts 64 --max-tokens 64 \
      --methods off,ngram,ngram-ds,hybrid-ds --out $OUT/$set-load | tee $OUT/$set-load/log.txt
  done
fi
