#!/usr/bin/env bash
# Issue 13, phase 28: under load (8 and 32 streams, 96 MT-Bench prompts of
# 64 tokens, lockstep: phase 13's load run) with the DSpark head's Markov
# rows kept per token: off, n-gram + datastore, the hybrid. The issue's
# "never below 0.98x off at 8 and 32 streams". From the repository root;
# DATA_PACKAGES as in smollm2-heads.sh, PYTHON the interpreter.
#
#   ROUNDS=1 SUFFIX=-a PYTHON=$PWD/.venv/bin/python bash bench/results/2026-12-05-phase28/load.sh   # ~10 min
#   (and SUFFIX=-b beside it on the other core)
METHODS=${METHODS:-off,ngram-ds,hybrid-ds} \
  OUT=bench/results/2026-12-05-phase28 STAGE=load SUFFIX=${SUFFIX:-} SETS=${SETS:-mt-bench} \
  exec bash bench/results/2026-12-03-load-lockstep/run.sh
