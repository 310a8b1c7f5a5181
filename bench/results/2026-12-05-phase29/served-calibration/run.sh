#!/usr/bin/env bash
# Issue 13, phase 29: phase 11's served-calibration replay over the
# committed DSpark head (5,633k anchors, phase 26): the stored map alone
# and stored + the scheduler's online map, per set, on the whole
# evaluation sets (80 MT-Bench + 80 HumanEval prompts, 96 tokens, T=0 and
# T=1). RUN holds eval-draft --records reports of the committed head
# (phase 26's check stage wrote them to runs/calib-c9989-1/whole); missing
# ones are regenerated (about 12 minutes, the two sets in parallel). The
# replay itself takes seconds. From the repository root.
RUN=${RUN:-runs/calib-c9989-1/whole} OUT=bench/results/2026-12-05-phase29/served-calibration \
  PYTHON=${PYTHON:-.venv/bin/python} exec bash bench/results/2026-12-02-served-calibration/run.sh
