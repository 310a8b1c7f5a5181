#!/usr/bin/env bash
# Issue 13, phase 22: phase 21's end-to-end comparison (one stream,
# lockstep, off / n-gram + datastore / hybrid + datastore / DSpark head)
# again, after the head's drafting got cheaper (commit a8d8132) and with
# the head the checks adopted. From the repository root.
#
#   ROUNDS=2 bash bench/results/2026-12-04-phase22/e2e.sh   # ~9 min
OUT=bench/results/2026-12-04-phase22/e2e exec bash bench/results/2026-12-04-phase21/e2e.sh
