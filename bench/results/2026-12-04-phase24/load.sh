#!/usr/bin/env bash
# Issue 13, phase 24: the hybrid with its payoff per band of n-gram's
# expectation and drafts valued at the share of a step they save, under
# load (8 and 32 streams, 96 prompts of 64 tokens, lockstep) beside the
# hybrid before it (`hybrid-ds-one-payoff`), off and n-gram + datastore:
# the issue's "never below 0.98x off at 8 and 32 streams". Phase 13's
# load run with this run's methods, folder and rounds. From the
# repository root; DATA_PACKAGES as in smollm2-heads.sh.
#
#   ROUNDS=2 bash bench/results/2026-12-04-phase24/load.sh   # one thread
METHODS=off,ngram-ds,hybrid-ds,hybrid-ds-one-payoff OUT=bench/results/2026-12-04-phase24 STAGE=load \
  SUFFIX=${SUFFIX:-} SETS=${SETS:-mt-bench} exec bash bench/results/2026-12-03-load-lockstep/run.sh
