"""Run the CUDA checks of issue 12 on a machine with a GPU and write a report.

    python -m tests.gpu.gpu_check --out DIR        (or: sh tools/gpu_check.sh, which uses $OUT)

Writes DIR/gpu_report.json and DIR/gpu_report.md. Each check runs even if
an earlier one failed; the exit status is 1 when any check failed (a
skipped check, e.g. the default model not installed there, does not
fail). Needs only what the repository already uses (torch with CUDA,
triton, tokenizers, safetensors, jinja2, pytest); nothing is downloaded.
The checks themselves are in tests/gpu/checks.py. (Under tests/ because
they build tiny models and run tests; pytest does not collect them.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

from tests.gpu import checks as gpu_checks
from tests.tiny_model import make_tiny_model_dir

CUDA_TESTS = ["tests/kernels/test_triton_paged_attention.py", "tests/engine/test_host_sync.py"]


def run_checks(workdir: str, skip_costs: bool = False) -> dict:
    target = make_tiny_model_dir(os.path.join(workdir, "target"), hidden_size=128, num_heads=4,
                                 num_kv_heads=2, num_layers=2, seed=3)
    draft = make_tiny_model_dir(os.path.join(workdir, "draft"), hidden_size=64, seed=11, num_layers=1)
    checks = {
        "environment": gpu_checks.environment,
        "pytest_cuda": lambda: gpu_checks.pytest_on_cuda(CUDA_TESTS),
        "host_syncs": lambda: gpu_checks.step_syncs(target, draft),
        "bf16_invariance": lambda: gpu_checks.bf16_invariance(target),
        "graphs_equal_eager": lambda: gpu_checks.graphs_equal_eager(target),
        "greedy_speculation_tiny": lambda: gpu_checks.greedy_speculation(target, draft),
        "greedy_speculation_default_model": gpu_checks.default_model_speculation,
        "token_trees_tiny": lambda: gpu_checks.token_trees(target, workdir),
    }
    if not skip_costs:
        checks["step_costs_bf16"] = lambda: gpu_checks.step_costs(
            make_tiny_model_dir(os.path.join(workdir, "smollm2-shaped"), **gpu_checks.SMOLLM2_SHAPE))
    report = {}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception:  # noqa: BLE001 - every check runs; the failure is in the report
            report[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {report[name].get('ok')} ({report[name]['seconds']} s)", flush=True)
    return report


def markdown(report: dict) -> str:
    lines = ["# GPU checks (issue 12)", "", "| check | result | seconds |", "|---|---|---|"]
    for name, found in report.items():
        result = {True: "pass", False: "FAIL", None: "skipped"}[found.get("ok")]
        lines.append(f"| {name} | {result} | {found.get('seconds')} |")
    costs = report.get("step_costs_bf16", {}).get("ms")
    if costs:
        lines += ["", "## Step cost, bf16 batch-invariant (ms, best of 20)", "",
                  "| shape | eager | CUDA graphs |", "|---|---|---|"]
        for label in costs["eager"]:
            lines.append(f"| {label} | {costs['eager'][label]} | {costs['graphs'][label]} |")
    lines += ["", "## Details", "", "```json", json.dumps(report, indent=1, default=str)[:20000], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="report folder (default: $OUT)")
    parser.add_argument("--skip-costs", action="store_true", help="leave out the step-cost table")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: these checks need one", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        report = run_checks(workdir, args.skip_costs)
    with open(os.path.join(args.out, "gpu_report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.out, "gpu_report.md"), "w") as f:
        f.write(markdown(report))
    return 0 if all(found.get("ok") is not False for found in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
