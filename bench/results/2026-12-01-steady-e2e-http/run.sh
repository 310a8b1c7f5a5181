cd /tmp/sweep
P=/work/main/.venv/bin/python
OFF="off=--speculative-method none --no-machine-counters"
NG="ngram=--speculative-method ngram --verify-policy adaptive --no-machine-counters"
HY="hybrid=--speculative-method hybrid --draft-model checkpoints/dspark-smollm2 --num-speculative-tokens 7 --verify-policy adaptive --no-machine-counters"
run() {  # dataset pass configs...
  ds=$1; pass=$2; shift 2
  OMP_NUM_THREADS=1 $P -m bench.spec_sweep --dataset $ds --concurrency 8,32 --num-prompts 128 --requests-per-level 64 \
    --max-tokens 64 --threads 1 --max-seconds 240 --drain-seconds 120 "$@" \
    --out-dir /work/logs/http-steady-$ds-$pass > /work/logs/http-steady-$ds-$pass.log 2>&1
}
for ds in mt-bench humaneval; do
  run $ds a --config "$OFF" --config "$NG" --config "$HY"
  run $ds b --config "$HY" --config "$NG" --config "$OFF"
done
