#!/usr/bin/env bash
# Issue 13, phase 27, as committed: one stream, end to end, off, n-gram +
# datastore (serve's default), the hybrid and the DSpark head alone; phase
# 21's lockstep comparison (8 prompts of 96 tokens per set). From the
# repository root; SETS picks the sets (two at once on the two cores:
# SETS=mt-bench and SETS=humaneval). The results in e2e-final/ ran at
# 739b0f0 (before the hybrid's streak-amortized backlog charge, 7416ae4).
#
#   ROUNDS=5 SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e-final.sh   # ~12 min a set
ROUNDS=${ROUNDS:-5} OUT=bench/results/2026-12-05-phase27/e2e-final METHODS=${METHODS:-off,ngram-ds,hybrid-ds,dspark} \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
