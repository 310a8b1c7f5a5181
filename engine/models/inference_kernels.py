"""Which kernel runs each linear layer of a loaded model, and in which mode.

`install_inference_kernels(model, batch_invariant)` packs every linear
weight once for the fastest kernel measured for its dtype (bench/results/
*-bf16/README.md) and, in batch-invariant mode, tiles the rows so that a
token's logits do not depend on the batch it is computed in. Before using a
tiling it probes it on this machine (kernels.linear.row_invariance_failures)
and falls back to the next kernel in the preference list when a probe fails;
when none passes it raises rather than serve a mode it cannot keep.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear import (FREE, INVARIANT_HEAD, INVARIANT_LAYERS, PackedLinear, RowTiling,
                            onednn_available, row_invariance_failures)

log = logging.getLogger("specserve.kernels")

# Fastest first, measured with one thread (bench/linear_kernels.py): bf16
# only pays through oneDNN's prepacked path; for float32 MKL's F.linear on a
# column-major weight wins below ~32 rows, oneDNN wins on the wide LM head.
PREFERENCE = {
    (torch.bfloat16, "layer"): ("onednn", "dense"),
    (torch.bfloat16, "head"): ("onednn", "dense"),
    (torch.float32, "layer"): ("dense", "onednn"),
    (torch.float32, "head"): ("onednn", "dense"),
}

# (out, in, dtype, device, kernel, tiling) -> probe passed; a model loaded
# twice (draft and target, tests) is probed once.
_PROBED: dict[tuple, bool] = {}


class Linear(nn.Linear):
    """nn.Linear that runs through a PackedLinear once one is installed
    (same parameters and state-dict names; training code sees a plain Linear)."""

    kernel: PackedLinear | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return F.linear(x, self.weight, self.bias)
        return self.kernel(x)


def install_inference_kernels(model, batch_invariant: bool) -> str:
    """Pack the linears of `model` (a LlamaForCausalLM) and set its mode;
    returns a short description (it keys the step-cost profile cache)."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    layer_kernels = {_install(m, "layer", batch_invariant) for m in linears}
    head_weight = model.lm_head_weight()
    model.head_kernel = _choose(head_weight, None, "head", batch_invariant)
    model.batch_invariant = batch_invariant
    if batch_invariant and head_weight.device.type != "cpu":
        log.warning("batch-invariant kernels are verified on CPU only; on %s the linear and GEMM "
                    "kernels may still change a token's logits with the batch", head_weight.device)
    description = (f"{str(head_weight.dtype).removeprefix('torch.')}/layers={'+'.join(sorted(layer_kernels))}"
                   f"/head={model.head_kernel.kernel}/{'invariant' if batch_invariant else 'free'}")
    log.info("inference kernels: %s", description)
    return description


def _install(module: Linear, role: str, batch_invariant: bool) -> str:
    module.kernel = _choose(module.weight.data, _bias(module), role, batch_invariant)
    return module.kernel.kernel


def _bias(module: nn.Linear) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.data


def _choose(weight: torch.Tensor, bias, role: str, batch_invariant: bool) -> PackedLinear:
    """The first preferred kernel (that can run here and, in invariant mode,
    passes the probe) for this weight."""
    tiling = (INVARIANT_HEAD if role == "head" else INVARIANT_LAYERS) if batch_invariant else FREE
    candidates = [k for k in PREFERENCE.get((weight.dtype, role), ("dense",))
                  if k != "onednn" or onednn_available(weight)]
    if weight.device.type != "cpu" or not batch_invariant:
        return PackedLinear(weight, bias, candidates[0], tiling)
    for kernel in candidates:
        linear = PackedLinear(weight, bias, kernel, tiling)
        if _passes_probe(linear, weight, tiling):
            return linear
    raise RuntimeError(
        f"no linear kernel is batch-invariant for a {tuple(weight.shape)} {weight.dtype} weight on "
        f"this machine (tried {candidates} with {tiling}); run with --no-batch-invariant")


def _passes_probe(linear: PackedLinear, weight: torch.Tensor, tiling: RowTiling) -> bool:
    key = (*weight.shape, weight.dtype, str(weight.device), linear.kernel, tiling)
    if key not in _PROBED:
        failures = row_invariance_failures(linear, (tiling.max_rows or 256) + 1, weight.dtype)
        if failures:
            log.info("%s kernel for %s %s is not row-invariant at %s rows", linear.kernel,
                     tuple(weight.shape), weight.dtype, failures)
        _PROBED[key] = not failures
    return _PROBED[key]
