#!/bin/sh
# The CUDA checks of issue 12 (docs/batch-invariance.md): report under $OUT (or ./gpu-report).
cd "$(dirname "$0")/.." && PYTHONPATH=. PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m tests.gpu.gpu_check --out "${OUT:-gpu-report}" "$@"
