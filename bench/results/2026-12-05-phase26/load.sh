#!/usr/bin/env bash
# Issue 13, phase 26: the hybrid over the 5,633k head under load (8 and 32
# streams, 96 MT-Bench prompts of 64 tokens, lockstep) beside off and
# n-gram + datastore: the issue's "never below 0.98x off at 8 and 32
# streams". Phase 13's load run with this run's methods and folder. From
# the repository root; DATA_PACKAGES as in smollm2-heads.sh, PYTHON the
# interpreter (e.g. $PWD/.venv/bin/python).
#
#   ROUNDS=1 PYTHON=$PWD/.venv/bin/python bash bench/results/2026-12-05-phase26/load.sh   # one thread, ~6 min a round
METHODS=off,ngram-ds,hybrid-ds OUT=bench/results/2026-12-05-phase26 STAGE=load \
  SUFFIX=${SUFFIX:-} SETS=${SETS:-mt-bench} exec bash bench/results/2026-12-03-load-lockstep/run.sh
