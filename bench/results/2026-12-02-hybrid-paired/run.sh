#!/usr/bin/env bash
# The hybrid against its parts (docs/draft-heads.md, "Phase 10"):
# in-process engines sharing one model. One stream in lockstep (the engines
# take steps in turn, each timed alone), 5 rounds, 8 prompts of 96 tokens,
# ratios taken within each round, then their median. One script, a STAGE
# per run of the phase (each ran at the commit that added its results):
#   STAGE=ablation bash run.sh        # default: with the head alone and the hybrid without its head
#   STAGE=backoff bash run.sh         # after exploration backs off           -> backoff/
#   STAGE=final bash run.sh           # beside an A/A pair (ngram-ds-again)   -> final/
#   STAGE=final-reversed bash run.sh  # the same, engines built the other way -> final-reversed/
#   STAGE=load bash run.sh            # chat at 8 and 32 streams, 3 rounds    -> load-chat/
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=bench/results/2026-12-02-hybrid-paired
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
case ${STAGE:-ablation} in
  ablation) DIR=$OUT; METHODS=off,ngram-ds,hybrid-ds,hybrid-ds-nohead,dspark ;;
  backoff) DIR=$OUT/backoff; METHODS=off,ngram-ds,hybrid-ds ;;
  final) DIR=$OUT/final; METHODS=off,ngram-ds,ngram-ds-again,hybrid-ds ;;
  final-reversed) DIR=$OUT/final-reversed; METHODS=off,hybrid-ds,ngram-ds-again,ngram-ds ;;
  load)
    mkdir -p $OUT/load-chat
    $PY -m tools.engine_ab mt-bench 8,32 3 --prompts 64 --max-tokens 64 \
      --methods off,hybrid-ds,ngram-ds --out $OUT/load-chat | tee $OUT/load-chat/log.txt
    exit 0 ;;
  *) echo "unknown STAGE ${STAGE}" >&2; exit 2 ;;
esac
for set in humaneval mt-bench; do
  mkdir -p $DIR/$set
  $PY -m tools.engine_ab $set 1 ${ROUNDS:-5} --prompts 8 --max-tokens 96 --lockstep --versus ngram-ds \
    --methods $METHODS --out $DIR/$set | tee $DIR/$set/log.txt
done
