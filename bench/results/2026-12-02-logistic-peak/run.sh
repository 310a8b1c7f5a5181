#!/usr/bin/env bash
# Issue 13, phase 7: the committed DSpark's calibration moved to
# logistic-peak at T=0, logistic kept at T=1. From the repository root;
# DATA_PACKAGES as in smollm2-heads.sh; PYTHON the interpreter.
#  1. the whole-set recheck of phase 5 with records that carry peaks (about
#     55 minutes on one core): the table's logistic-peak row is fitted on
#     all 149 held-out sequences and checked on 80 MT-Bench and 80 HumanEval
#     prompts (dspark-whole-sets-committed-logistic.md: its `stored` row is
#     the logistic calibration committed before this phase);
#  2. calibrate-draft with a method per temperature (25 minutes), the
#     candidate, and the same table scoring it as stored;
#  3. side by side in one run per prompt set, one stream: the hybrid over
#     the committed head and over the candidate (tools.engine_ab
#     --candidate; the two sets in parallel, one core each), then chat at
#     8 streams alone;
#  4. the candidate becomes the committed calibration.
set -euo pipefail
OUT=bench/results/2026-12-02-logistic-peak
CANDIDATE=${CANDIDATE:-runs/heads-smollm2/dspark-299k-mixed}
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
# run.sh writes its table over phase 5's: keep that one, take the new one here
cp bench/results/2026-12-01-calibration/dspark-whole-sets.md "$OUT/.phase5-table.md"
WHOLE=1 RUN=runs/calib-peak HEADS=dspark PYTHON=$PY bash bench/results/2026-12-01-calibration/run.sh
mv bench/results/2026-12-01-calibration/dspark-whole-sets.md "$OUT/dspark-whole-sets-committed-logistic.md"
mv "$OUT/.phase5-table.md" bench/results/2026-12-01-calibration/dspark-whole-sets.md
[ -f "$CANDIDATE/config.json" ] || "$PY" -m engine.spec.training.cli calibrate-draft \
  --draft-model checkpoints/dspark-smollm2 --out "$CANDIDATE" --work-dir runs/calib-data --dtype float32 \
  --heldout-data sharegpt:160 --max-new-tokens 256 --gen-batch 32 --calibration-tokens 128 \
  --calibration 0=logistic-peak,1=logistic --seed 0 --threads 1
cp "$CANDIDATE/calibration-report.json" "$OUT/calibration-report.json"
"$PY" -m engine.spec.training.scripts.calibration_methods table --fit runs/calib-peak/dspark-heldout-fit160.json \
  --check runs/calib-peak/whole/dspark-{mtbench,humaneval}.json --checkpoint "$CANDIDATE" \
  > "$OUT/dspark-whole-sets-candidate.md"
for set in mt-bench humaneval; do
  "$PY" -m tools.engine_ab $set 1 3 --prompts 8 --max-tokens 96 --methods off,ngram,hybrid,hybrid-candidate \
    --candidate "$CANDIDATE" --out "$OUT/$set-c1" > "$OUT/$set-c1.log" 2>&1 &
done
wait
"$PY" -m tools.engine_ab mt-bench 8 3 --prompts 64 --methods off,ngram,hybrid,hybrid-candidate \
  --candidate "$CANDIDATE" --out "$OUT/mt-bench-c8" > "$OUT/mt-bench-c8.log" 2>&1
cp "$CANDIDATE"/{config.json,calibration-report.json} checkpoints/dspark-smollm2/
