#!/usr/bin/env bash
# Issue 13, phase 27: under load (8 and 32 streams, 96 MT-Bench prompts of
# 64 tokens, lockstep), drafts priced as query rows (ngram-ds, hybrid-ds)
# beside the request-priced policy before phase 27 and off: the issue's
# "never below 0.98x off at 8 and 32 streams". Phase 13's load run with this
# run's methods and folder. From the repository root; DATA_PACKAGES as in
# smollm2-heads.sh, PYTHON the interpreter (e.g. $PWD/.venv/bin/python).
#
# Measured at commit d7735c8 (drafts priced as rows, reverted after these
# runs: docs/draft-heads.md, "Phase 27"), as two one-round runs at once:
#
#   git checkout d7735c8 && ROUNDS=1 SUFFIX=-a PYTHON=$PWD/.venv/bin/python bash bench/results/2026-12-05-phase27/load.sh   # ~12 min
#   (and SUFFIX=-b beside it on the other core)
METHODS=${METHODS:-off,ngram-ds,ngram-ds-request-priced,hybrid-ds,hybrid-ds-request-priced} \
  OUT=bench/results/2026-12-05-phase27 STAGE=load SUFFIX=${SUFFIX:-} SETS=${SETS:-mt-bench} \
  exec bash bench/results/2026-12-03-load-lockstep/run.sh
