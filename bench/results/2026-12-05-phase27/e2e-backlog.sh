#!/usr/bin/env bash
# Issue 13, phase 27, a change measured and reverted: one stream, end to
# end, the hybrid with a request's backlog folding charged to its run
# (hybrid-ds at commit 1a9721d) beside the hybrid without the charge
# (hybrid-ds-backlog-free, today's hybrid), n-gram + datastore and off;
# phase 21's lockstep comparison (8 prompts of 96 tokens per set). The
# charge cost code 4% (0.994 of n-gram + datastore against 1.037) and did
# not lift chat (0.988 against 0.983), so 1a9721d was reverted; to rerun,
# check that commit out. From the repository root; SETS picks the sets
# (two at once on the two cores: SETS=mt-bench and SETS=humaneval).
#
#   git checkout 1a9721d && ROUNDS=3 SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e-backlog.sh   # ~10 min a set
ROUNDS=${ROUNDS:-3} OUT=bench/results/2026-12-05-phase27/e2e-backlog METHODS=${METHODS:-off,ngram-ds,hybrid-ds,hybrid-ds-backlog-free} \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
