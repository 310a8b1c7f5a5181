#!/usr/bin/env bash
# Issue 13, phase 24: phase 21's end-to-end comparison (one stream,
# lockstep, off / n-gram + datastore / hybrid + datastore / DSpark head)
# with the head phase 24's checks adopted, and the hybrid as it was before
# phase 24 (`hybrid-ds-one-payoff`: one head payoff for every band of
# n-gram's expectation) beside today's. From the repository root.
#
#   ROUNDS=2 bash bench/results/2026-12-04-phase24/e2e.sh   # ~13 min
METHODS=off,ngram-ds,hybrid-ds,hybrid-ds-one-payoff,dspark OUT=bench/results/2026-12-04-phase24/e2e \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
