#!/usr/bin/env bash
# Issue 13, phase 2: evaluate the trained SmolLM2 heads with real
# speculative decoding (eval-draft: the server's engine step, every draft of
# a 7-token block verified), one run per head and prompt set so tau is per
# set, T=0 and T=1; then n-gram alone and the hybrid (n-gram + head) on the
# same prompts. Reports land in RUN_DIR/eval/*.json (git-ignored);
# `python -m engine.spec.training.scripts.heads_table RUN_DIR/eval` tabulates them.
#
#   engine/spec/training/scripts/smollm2-heads-eval.sh [RUN_DIR] [HEADS...]
#
# Environment: PYTHON, DATA_PACKAGES (as smollm2-heads.sh), PROMPTS (per set,
# default 8), MAX_NEW_TOKENS (default 96), COMPARE (1: also n-gram and the
# hybrid with the last head named; 0: heads only). A report that exists is
# skipped.
set -euo pipefail

REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PY=${PYTHON:-python}
RUN=$(realpath -m "${1:-$REPO/runs/heads-smollm2}")  # absolute: evaluations run from a snapshot
shift || true
HEADS=("${@:-eagle3 dflash dspark}")
read -r -a HEADS <<< "${HEADS[*]}"
PROMPTS=${PROMPTS:-8}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-96}
SETS=(mtbench humaneval sharegpt)

sha=$(git -C "$REPO" rev-parse --short=12 HEAD)
CODE="$RUN/code-$sha"
if [ ! -d "$CODE" ]; then
  tmp=$(mktemp -d "$CODE.XXXXXX")
  git -C "$REPO" archive "$sha" | tar -x -C "$tmp"
  mv -T "$tmp" "$CODE" 2>/dev/null || rm -rf "$tmp"
fi
mkdir -p "$RUN/eval"

evaluate() {  # HEAD_DIR DRAFTER SET OUT
  local out=$4
  [ -f "$out" ] && { echo "== have $out"; return; }
  echo "== $(date -u +%FT%TZ) $(basename "$CODE") eval-draft --draft-model $1 --drafter $2 --data $3:$PROMPTS"
  (cd "$CODE" && PYTHONPATH="$CODE${DATA_PACKAGES:+:$DATA_PACKAGES}" OMP_NUM_THREADS=1 \
    "$PY" -m engine.spec.training.cli eval-draft --draft-model "$1" --drafter "$2" --data "$3:$PROMPTS" \
    --max-new-tokens "$MAX_NEW_TOKENS" --temperatures 0 1 --dtype float32 --threads 1 --no-progress \
    --report "$out.tmp" > /dev/null) && mv "$out.tmp" "$out"
}

for head in "${HEADS[@]}"; do
  for set in "${SETS[@]}"; do
    evaluate "$RUN/$head" head "$set" "$RUN/eval/$head-$set.json"
  done
done
# n-gram alone and the hybrid with the last head named (DSpark by default).
[ "${COMPARE:-1}" = 1 ] || exit 0
last=${HEADS[-1]}
for set in "${SETS[@]}"; do
  evaluate "$RUN/$last" ngram "$set" "$RUN/eval/ngram-$set.json"
  evaluate "$RUN/$last" hybrid "$set" "$RUN/eval/hybrid-$last-$set.json"
done
