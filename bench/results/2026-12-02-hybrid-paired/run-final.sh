#!/usr/bin/env bash
# The hybrid as committed at the end of phase 10 (exploration that backs
# off, the payoff counting gains over the n-gram block displaced) against
# n-gram + datastore, beside an A/A pair: ngram-ds-again is a second engine
# of ngram-ds's configuration, so its ratio to ngram-ds is what two equal
# methods read in this comparison. Lockstep, as run.sh.
#   bash bench/results/2026-12-02-hybrid-paired/run-final.sh
#   ORDER=reversed bash ...   # the engines built in the other order (final-reversed/)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-hybrid-paired/final
METHODS=off,ngram-ds,ngram-ds-again,hybrid-ds
if [ "${ORDER:-}" = reversed ]; then OUT=$OUT-reversed; METHODS=off,hybrid-ds,ngram-ds-again,ngram-ds; fi
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
for set in humaneval mt-bench; do
  mkdir -p $OUT/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods $METHODS --out $OUT/$set | tee $OUT/$set/log.txt
done
