#!/usr/bin/env bash
# Greedy token trees served (docs/draft-heads.md, "Phase 17"): n-gram +
# datastore verifying the other source's block beside its own
# (`ngram-ds-tree`, --ngram-alternatives) against n-gram + datastore and
# speculation off. One stream, lockstep, 5 rounds of 8 prompts of 96 tokens
# per set, code and chat in parallel on the two cores. From anywhere in the
# repository; DATA_PACKAGES as in smollm2-heads.sh (MT-Bench, HumanEval);
# PYTHON the interpreter.
#   STAGE=c1           engines built in that order
#   STAGE=c1-reversed  built in the reverse order
#   STAGE=load         8 and 32 streams, 96 prompts of 64 tokens, 3 rounds
# METHODS replaces the stage's engines and SUFFIX names the output folder's
# variant (METHODS=off,ngram-ds,ngram-ds-again,ngram-ds-tree SUFFIX=-aa with
# STAGE=load: an A/A pair of n-gram + datastore beside the trees).
set -euo pipefail
wait_all() { for job in $(jobs -p); do wait "$job"; done; }
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-03-token-trees
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
case ${STAGE:?STAGE=c1, c1-reversed or load} in
c1) methods=off,ngram-ds,ngram-ds-tree; runs="1 5 --prompts 8 --max-tokens 96" ;;
c1-reversed) methods=ngram-ds-tree,ngram-ds,off; runs="1 5 --prompts 8 --max-tokens 96" ;;
load) methods=off,ngram-ds,ngram-ds-tree; runs="8,32 3 --prompts 96 --max-tokens 64" ;;
*) echo "unknown STAGE=$STAGE" >&2; exit 2 ;;
esac
methods=${METHODS:-$methods}
for set in humaneval mt-bench; do
  dir="$OUT/$set-$STAGE${SUFFIX:-}"
  mkdir -p "$dir"
  # shellcheck disable=SC2086  # $runs is the concurrencies, rounds and options
  "$PY" -m tools.engine_ab "$set" $runs --lockstep --versus ngram-ds \
    --methods "$methods" --out "$dir" > "$dir/log.txt" 2>&1 &
done
wait_all
