"""What a lent GPU machine needs of the checkout (tools/gpu_check.sh runs
there): the device tool takes a working tree of at most 64 MiB, and its
Python image has no package registry behind it, so the checks may import
only what that image holds (the workplace's device notes, KINDS.md, list
as of 2026-11-17). Both broke unnoticed once: 80 MiB of plain weights,
and xgrammar (with pydantic) imported with the engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
# 64 MiB is the device tool's limit; the rest is room for shared/ and carried files.
TRACKED_TREE_BUDGET = 62 * MiB
OURS = {"engine", "scheduler", "kernels", "tests", "tools", "bench", "cli", "server"}
# Import names of the packages the device image holds that our engine can reach.
DEVICE_IMAGE = {"torch", "torchgen", "triton", "numpy", "safetensors", "tokenizers", "transformers",
                "huggingface_hub", "hf_xet", "jinja2", "markupsafe", "tqdm", "typing_extensions", "yaml",
                "filelock", "fsspec", "packaging", "regex", "requests", "urllib3", "certifi", "idna",
                "charset_normalizer", "httpx", "httpcore", "h11", "anyio", "sniffio", "prometheus_client",
                "psutil", "sympy", "mpmath", "networkx", "PIL", "pytest", "_pytest", "pluggy", "iniconfig",
                "cython_runtime"}


def tracked_sizes() -> dict[str, int]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked tree to measure")
    names = [name for name in listed.decode().split("\0") if name]
    return {name: os.path.getsize(os.path.join(ROOT, name)) for name in names
            if os.path.isfile(os.path.join(ROOT, name))}


def test_the_tracked_tree_fits_a_lent_gpu_machine():
    sizes = tracked_sizes()
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert total <= TRACKED_TREE_BUDGET, (
        f"tracked files hold {total / MiB:.1f} MiB, over {TRACKED_TREE_BUDGET / MiB:.0f} MiB: a lent GPU "
        f"machine would refuse the checkout (pack weights with xz, engine/packed_files.py). Largest: {largest}")


def test_the_gpu_checks_import_only_what_the_device_image_holds():
    probe = ("import json, sys; import tests.gpu.gpu_check, tests.gpu.checks; "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    found = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": ROOT}, check=True).stdout
    third_party = {name for name in json.loads(found.splitlines()[-1])
                   if name not in sys.stdlib_module_names and not name.startswith("_") or name == "_pytest"}
    assert third_party - OURS - DEVICE_IMAGE == set(), "imported by the GPU checks, missing on the device image"
