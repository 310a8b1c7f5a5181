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

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_outside_load(monkeypatch):
    """In-process engines read no machine counters: on this shared machine
    the run-queue wait would make adaptive decisions (and so the tests'
    checks that speculation happened) depend on what else runs. Tests of the
    counters hand fake sources to DeviceSampler / the policy themselves."""
    import engine.engine

    monkeypatch.setattr(engine.engine, "source_for_device", lambda device: None)
