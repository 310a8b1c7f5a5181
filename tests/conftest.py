"""Shared test settings: one torch thread (the 2 CPU cores are shared)."""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(1)
if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU tensors (read when
    # triton is first imported, so it is set before any test imports it).
    os.environ.setdefault("TRITON_INTERPRET", "1")
