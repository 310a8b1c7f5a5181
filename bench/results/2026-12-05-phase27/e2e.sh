#!/usr/bin/env bash
# Issue 13, phase 27: one stream, end to end, the verify policy pricing
# drafts as query rows of requests already in the step (ngram-ds,
# hybrid-ds) beside the policy before it, which priced each draft as one
# more request (the -request-priced ablations), and off; phase 21's lockstep
# comparison (8 prompts of 96 tokens per set). From the repository root;
# SETS picks the sets (two at once on the two cores: SETS=mt-bench and
# SETS=humaneval). Measured at commit d7735c8, which priced drafts as rows;
# level at best, it was reverted (docs/draft-heads.md, "Phase 27"): to
# rerun, check that commit out.
#
#   git checkout d7735c8 && ROUNDS=3 SETS=mt-bench bash bench/results/2026-12-05-phase27/e2e.sh   # ~8 min a set
ROUNDS=${ROUNDS:-3} OUT=bench/results/2026-12-05-phase27/e2e METHODS=${METHODS:-off,ngram-ds,ngram-ds-request-priced,hybrid-ds,hybrid-ds-request-priced} \
  exec bash bench/results/2026-12-04-phase21/e2e.sh
