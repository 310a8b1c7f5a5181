cd "$(dirname "$0")/../../.."  # ran on a clone of 8b293dd (AMD EPYC Zen 4, bfloat16 by --dtype auto)
P=.venv/bin/python
OFF="off=--speculative-method none --no-machine-counters"
NG="ngram=--speculative-method ngram --verify-policy adaptive --no-machine-counters"
HY="hybrid=--speculative-method hybrid --draft-model checkpoints/dspark-smollm2 --verify-policy adaptive --no-machine-counters"
OMP_NUM_THREADS=1 $P -m bench.spec_sweep --dataset mt-bench --concurrency 1 --num-prompts 16 --requests-per-level 8 \
  --max-tokens 96 --threads 1 --max-seconds 240 --drain-seconds 120 --rounds 3 \
  --config "$OFF" --config "$NG" --config "$HY" \
  --out-dir bench/results/2026-12-01-amd-bf16-chat1/mt-bench > bench/results/2026-12-01-amd-bf16-chat1/mt-bench.log 2>&1
