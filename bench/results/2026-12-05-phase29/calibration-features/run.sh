#!/usr/bin/env bash
# Issue 13, phase 29: the committed DSpark head's T=0 map refitted with one
# context feature beside the confidence and the peak (code fence, the
# request's own first drafts, position in the reply), fitted on the
# held-out set phase 26 calibrated on, scored on the cached evaluation
# sequences (16 per set, teacher-forced) and on the whole sets' records.
# Two threads, about two minutes. From the repository root, on the host
# that holds phase 26's run directories.
set -euo pipefail
D=${DATA:-runs/heads-smollm2/data-c8000-9989-bf16}
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=.${DATA_PACKAGES:+:$DATA_PACKAGES}
"$PY" -m engine.spec.training.scripts.calibration_features --draft-model runs/heads-smollm2/dspark-c9989-1 \
  --fit runs/calib-data-code/features-heldout \
  --check humaneval=$D/features-eval-humaneval mtbench=$D/features-eval-mtbench \
  --whole runs/calib-c9989-1/whole/dspark-mtbench.json runs/calib-c9989-1/whole/dspark-humaneval.json \
  --threads 2 > bench/results/2026-12-05-phase29/calibration-features/table.md
