#!/usr/bin/env bash
# Issue 13, phase 26: phase 21's end-to-end comparison (one stream,
# lockstep, off / n-gram + datastore / hybrid + datastore / DSpark head)
# over the 5,633k head adopted in phase 26. From the repository root.
#
#   ROUNDS=2 bash bench/results/2026-12-05-phase26/e2e.sh   # ~12 min
METHODS=off,ngram-ds,hybrid-ds,dspark OUT=bench/results/2026-12-05-phase26/e2e \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
