"""Which kernel runs each linear layer of a loaded model, and in which mode.

`install_inference_kernels(model, batch_invariant)` packs every linear
weight once for the fastest kernel measured for its dtype and, in
batch-invariant mode, tiles rows (and, where it helps, the input dimension)
so that a token's logits do not depend on the batch it is computed in.
Each invariant choice is probed on this machine first
(kernels.linear.row_invariance_failures); a failing probe moves on to the
next choice, and when none passes the model refuses to load rather than
serve a mode it cannot keep.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear import (FREE, SMALL_GEMM_ROWS, KernelChoice, PackedLinear, RowTiling, onednn_available,
                           row_invariance_failures)

log = logging.getLogger("specserve.kernels")

# Rows per call in invariant mode. Layers: oneDNN bf16 on AMX keeps rows
# invariant up to 256; LM head (vocabulary-wide): two elements change from
# 64 rows on there. (bench/results/*-bf16/README.md has the measurements.)
LAYER_ROWS, HEAD_ROWS = 256, 32
# How far oneDNN keeps bf16 rows invariant depends on the host, not only on
# the shape: on a second AMX host (2026-12-03) every SmolLM2 layer shape
# changed row 0 from 33 rows on, at 64, 128 and 256-row tiles alike. Smaller
# tiles are probed next: invariance kept, larger batches cut into more calls.
NARROW_LAYER_ROWS = (64, HEAD_ROWS)
# oneDNN float32 sums a single row like a batch only up to 1024 inputs.
ONEDNN_FP32_K_CHUNK = 1024
# float32 calls are padded to at least this many rows. In a whole forward,
# where every weight streams from memory (SmolLM2's 540 MB in float32 does
# not stay in cache), oneDNN's kernel for 4-6 rows is faster than its one-
# and two-row kernels: a one-token step took 45.0 ms padded to four against
# 53.2 unpadded and 61.1 padded to two on an AMD Zen 4 host; 7 rows and more
# cost a second pass (bench/results/2026-12-01-row-padding/). Four or more
# rows also sum a row like a batch without cutting the input dimension.
FP32_MIN_ROWS = 4


def _choice(kernel: str, min_rows: int, max_rows: int, k_chunk: int | None = None) -> KernelChoice:
    return KernelChoice(kernel, RowTiling(min_rows, max_rows), k_chunk)


# Invariant mode, fastest first (one thread, SmolLM2 shapes). bf16 pays only
# through oneDNN's prepacked path, where a single row unpadded is the cheaper
# decode if the kernel allows it, else it is padded to SMALL_GEMM_ROWS.
# float32
# through oneDNN padded to FP32_MIN_ROWS; a single row unpadded (input cut at
# ONEDNN_FP32_K_CHUNK) and MKL's F.linear are the fallbacks.
INVARIANT_PREFERENCE = {
    (torch.bfloat16, "layer"): (_choice("onednn", 1, LAYER_ROWS), _choice("onednn", SMALL_GEMM_ROWS, LAYER_ROWS),
                                *(_choice("onednn", 1, rows) for rows in NARROW_LAYER_ROWS),
                                _choice("dense", SMALL_GEMM_ROWS, LAYER_ROWS)),
    (torch.bfloat16, "head"): (_choice("onednn", 1, HEAD_ROWS), _choice("onednn", SMALL_GEMM_ROWS, HEAD_ROWS),
                               _choice("dense", SMALL_GEMM_ROWS, HEAD_ROWS)),
    (torch.float32, "layer"): (_choice("onednn", FP32_MIN_ROWS, LAYER_ROWS),
                               _choice("onednn", 1, LAYER_ROWS, ONEDNN_FP32_K_CHUNK),
                               _choice("dense", SMALL_GEMM_ROWS, LAYER_ROWS)),
    (torch.float32, "head"): (_choice("onednn", FP32_MIN_ROWS, HEAD_ROWS),
                              _choice("onednn", 1, HEAD_ROWS, ONEDNN_FP32_K_CHUNK),
                              _choice("dense", SMALL_GEMM_ROWS, HEAD_ROWS)),
}
# Free mode: one call per batch with the fastest kernel (MKL's gemv is the
# quickest float32 single row).
FREE_PREFERENCE = {
    (torch.bfloat16, "layer"): KernelChoice("onednn"),
    (torch.bfloat16, "head"): KernelChoice("onednn"),
    (torch.float32, "layer"): KernelChoice("dense"),
    (torch.float32, "head"): KernelChoice("onednn"),
}

# (out, in, dtype, device, choice) -> probe passed; a model loaded twice
# (draft and target, tests) is probed once.
_PROBED: dict[tuple, bool] = {}


class Linear(nn.Linear):
    """nn.Linear that runs through a PackedLinear once one is installed
    (same parameters and state-dict names; training code sees a plain Linear)."""

    kernel: PackedLinear | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The packed kernel holds a copy of the weight: gradients would not reach it.
        if self.kernel is None or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return self.kernel(x)


def install_inference_kernels(model, batch_invariant: bool) -> str:
    """Pack the linears of `model` (a LlamaForCausalLM) and set its mode;
    returns a short description (it keys the step-cost profile cache)."""
    linears = pack_linears(model, batch_invariant)
    head_weight = model.lm_head_weight()
    model.head_kernel = choose_kernel(head_weight, None, "head", batch_invariant)
    model.batch_invariant = batch_invariant
    if batch_invariant and head_weight.device.type != "cpu":
        log.warning("batch-invariant kernels are verified on CPU only; on %s the linear and GEMM "
                    "kernels may still change a token's logits with the batch", head_weight.device)
    layers = sorted({str(m.kernel.choice) for m in linears})
    description = (f"{str(head_weight.dtype).removeprefix('torch.')}/layers={'+'.join(layers)}"
                   f"/head={model.head_kernel.choice}/{'invariant' if batch_invariant else 'free'}")
    log.info("inference kernels: %s", description)
    tile = min((m.kernel.tiling.max_rows or LAYER_ROWS for m in linears), default=LAYER_ROWS)
    if batch_invariant and tile < LAYER_ROWS:
        log.warning("this host keeps a layer's rows batch-invariant only up to %d rows: larger batches "
                    "(prefill chunks, big verify steps) run in calls of that many, slower; "
                    "--no-batch-invariant trades the invariance for speed", tile)
    return description


def pack_linears(module: nn.Module, batch_invariant: bool) -> list[Linear]:
    """Pack every `Linear` inside `module` for inference (a draft head's too);
    returns them. Their weights must not change afterwards."""
    linears = [m for m in module.modules() if isinstance(m, Linear)]
    for linear in linears:
        linear.kernel = choose_kernel(linear.weight.data, _bias(linear), "layer", batch_invariant)
    return linears


def _bias(module: nn.Linear) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.data


def choose_kernel(weight: torch.Tensor, bias, role: str, batch_invariant: bool) -> PackedLinear:
    """The first choice that runs here and, in invariant mode, passes the probe."""
    key = (weight.dtype, role)
    if weight.device.type != "cpu":  # cuBLAS: tiled as on CPU when asked, unverified (see the warning)
        rows = HEAD_ROWS if role == "head" else LAYER_ROWS
        return PackedLinear(weight, bias, KernelChoice("dense", RowTiling(2, rows) if batch_invariant else FREE))
    if not batch_invariant:
        choice = FREE_PREFERENCE.get(key, KernelChoice("dense"))
        usable = choice.kernel != "onednn" or onednn_available(weight)
        return PackedLinear(weight, bias, choice if usable else KernelChoice("dense"))
    candidates = [c for c in INVARIANT_PREFERENCE.get(key, (_choice("dense", SMALL_GEMM_ROWS, LAYER_ROWS),))
                  if c.kernel != "onednn" or onednn_available(weight)]
    for choice in candidates:
        linear = PackedLinear(weight, bias, choice)
        if _passes_probe(linear, weight):
            return linear
    raise RuntimeError(
        f"no linear kernel is batch-invariant for a {tuple(weight.shape)} {weight.dtype} weight on "
        f"this machine (tried {', '.join(map(str, candidates))}); run with --no-batch-invariant")


def _passes_probe(linear: PackedLinear, weight: torch.Tensor) -> bool:
    key = (*weight.shape, weight.dtype, str(weight.device), linear.choice)
    if key not in _PROBED:
        failures = row_invariance_failures(linear, (linear.tiling.max_rows or LAYER_ROWS) + 1, weight.dtype,
                                           first_only=True)
        if failures:
            log.info("%s for a %s %s weight is not row-invariant (first at %d rows)", linear.choice,
                     tuple(weight.shape), weight.dtype, failures[0])
        _PROBED[key] = not failures
    return _PROBED[key]
