#!/usr/bin/env bash
# Issue 13, phase 28: one stream, end to end, lockstep (phase 21's e2e.sh):
# off, n-gram + datastore, the hybrid, and the hybrid with its Markov rows
# recomputed for every draft as before this phase (the ablation
# hybrid-ds-markov-uncached). SETS picks the sets (two at once on the two
# cores: SETS=mt-bench and SETS=humaneval). From the repository root.
#
#   ROUNDS=7 SETS=mt-bench bash bench/results/2026-12-05-phase28/e2e.sh   # ~10 min a set
ROUNDS=${ROUNDS:-7} OUT=${OUT:-bench/results/2026-12-05-phase28/e2e} \
  METHODS=${METHODS:-off,ngram-ds,hybrid-ds,hybrid-ds-markov-uncached} \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
