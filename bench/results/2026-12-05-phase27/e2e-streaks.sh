#!/usr/bin/env bash
# Issue 13, phase 27, a change measured and reverted: one stream, end to
# end, the hybrid charging a request's run its backlog folding over the
# mean streak of head runs (hybrid-ds at 7416ae4) beside the hybrid without
# the charge (hybrid-ds-backlog-free, today's hybrid) and n-gram +
# datastore; phase 21's lockstep comparison (8 prompts of 96 tokens per
# set), five rounds. Code 1.000 of n-gram + datastore against 1.033
# without the charge, chat 0.998 against 0.990: reverted. To rerun, check
# 7416ae4 out. From the repository root; SETS picks the sets (two at once
# on the two cores).
#
#   git checkout 7416ae4 && SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e-streaks.sh   # ~8 min a set
ROUNDS=${ROUNDS:-5} OUT=bench/results/2026-12-05-phase27/e2e-streaks \
  METHODS=${METHODS:-ngram-ds,hybrid-ds,hybrid-ds-backlog-free} exec bash bench/results/2026-12-04-phase21/e2e.sh
