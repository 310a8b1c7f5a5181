#!/usr/bin/env bash
# specserve (bfloat16, speculation off and the serve defaults: n-gram + the
# bundled datastore, adaptive) against llama-cpp-python on the GGUF as
# stored, one thread per server, servers one after another (bench/README.md).
# Measured at 985cf01 from a worktree of that commit, DATA_PACKAGES as in
# engine/spec/training/scripts/smollm2-heads.sh; llama.cpp built beforehand
# with `python -m bench.peers setup llama-cpp-python` (403 s here).
# THREADS=2 gives two-threads/ (run at 111be0b).
set -euxo pipefail
THREADS=${THREADS:-1}
OUT=bench/results/2026-12-03-peers-bf16$([ "$THREADS" = 1 ] || echo /two-threads)
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
for ds in mt-bench humaneval; do
  PYTHONPATH=${DATA_PACKAGES:?a folder holding the dataset packages}:. .venv/bin/python -m bench \
    --systems specserve,specserve-spec,llama-cpp-python \
    --concurrency 1,8 --dataset $ds --max-tokens 64 --threads "$THREADS" --dtype bfloat16 \
    --out-dir "$OUT/$ds"
done
