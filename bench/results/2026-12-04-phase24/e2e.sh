#!/usr/bin/env bash
# Issue 13, phase 24: phase 21's end-to-end comparison (one stream,
# lockstep, off / n-gram + datastore / hybrid + datastore / DSpark head)
# with the head phase 24's checks adopted. From the repository root.
#
#   ROUNDS=2 bash bench/results/2026-12-04-phase24/e2e.sh   # ~10 min
OUT=bench/results/2026-12-04-phase24/e2e exec bash bench/results/2026-12-04-phase21/e2e.sh
