#!/usr/bin/env bash
# One stream through HTTP: `specserve serve` per configuration, three
# rounds in rotating order (bench.spec_sweep), 8 requests of 96 tokens per
# configuration and round. ngram-ds is serve's default n-gram (the bundled
# datastore, --ngram-datastore auto); ngram turns the datastore off.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
D=bench/results/2026-12-02-datastore/http-c1
P=${PYTHON:-.venv/bin/python}
OFF="off=--speculative-method none --no-machine-counters"
NG="ngram=--speculative-method ngram --ngram-datastore none --verify-policy adaptive --no-machine-counters"
NDS="ngram-ds=--speculative-method ngram --verify-policy adaptive --no-machine-counters"
HDS="hybrid-ds=--speculative-method hybrid --draft-model checkpoints/dspark-smollm2 --verify-policy adaptive --no-machine-counters"
for ds in humaneval mt-bench; do
  OMP_NUM_THREADS=1 $P -m bench.spec_sweep --dataset $ds --concurrency 1 --num-prompts 16 --requests-per-level 8 \
    --max-tokens 96 --threads 1 --max-seconds 240 --drain-seconds 120 --rounds 3 \
    --config "$OFF" --config "$NG" --config "$NDS" --config "$HDS" \
    --out-dir $D/$ds > $D/$ds.log 2>&1
done
