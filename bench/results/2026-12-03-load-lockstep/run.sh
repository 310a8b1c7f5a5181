#!/usr/bin/env bash
# Speculation under load measured in lockstep (docs/draft-heads.md, "Phase
# 13"): the methods' streams side by side, the engines taking steps in turn,
# each step timed alone, so a ratio at 8 or 32 streams no longer spreads
# with the host's drift as whole-run rounds did (+-10%). From anywhere in
# the repository; DATA_PACKAGES as in smollm2-heads.sh (MT-Bench, HumanEval);
# PYTHON the interpreter; METHODS the engines (default: off, n-gram + the
# shipped datastore, the same again as an A/A pair); SETS the prompt sets.
#   STAGE=load           8 and 32 streams, 96 prompts of 64 tokens, 4 rounds
#   STAGE=load-reversed  the same, engines built in the reverse order
# SUFFIX names the output folder's variant (METHODS=off,off-pow2-tiles,
# ngram-ds,ngram-ds-pow2-tiles SUFFIX=-tiles: the CPU attention's tile plan
# against the one before it, mt-bench-load-tiles; METHODS=off,ngram-ds,
# hybrid-ds,hybrid-ds-policy-map SUFFIX=-hybrid-map with STAGE=load, and
# SUFFIX=-hybrid-map-reversed with STAGE=load-reversed, the two at once on
# the two cores: the hybrid in both build orders, and its n-gram blocks
# mapped by the policy's calibrator instead of its own per-source maps; that
# ablation is today's hybrid since phase 15, and the hybrid of then is
# `hybrid-ds-own-map`).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-bench/results/2026-12-03-load-lockstep}  # phase 24's load.sh calls this with its own
PY=${PYTHON:-python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES} OMP_NUM_THREADS=1
METHODS=${METHODS:-off,ngram-ds,ngram-ds-again}
SETS=${SETS:-mt-bench}
reversed_methods() { echo "$1" | tr ',' '\n' | tac | paste -sd, -; }
# 96 prompts of 64 tokens at both levels.
case ${STAGE:?STAGE=load or load-reversed} in
load) order=$METHODS; name=load${SUFFIX:-}; runs="8,32 ${ROUNDS:-4} --prompts 96 --max-tokens 64" ;;
load-reversed) order=$(reversed_methods "$METHODS"); name=load${SUFFIX:--reversed}
  runs="8,32 ${ROUNDS:-4} --prompts 96 --max-tokens 64" ;;
*) echo "unknown STAGE=$STAGE" >&2; exit 2 ;;
esac
for set in $SETS; do
  dir="$OUT/$set-$name"
  mkdir -p "$dir"
  # shellcheck disable=SC2086  # $runs is the concurrencies, rounds and options
  "$PY" -m tools.engine_ab "$set" $runs --methods "$order" \
    --lockstep --versus ngram-ds --out "$dir" > "$dir/log.txt" 2>&1
done
