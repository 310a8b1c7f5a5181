"""What the hardware computes fast, and the dtype `--dtype auto` resolves to.

bfloat16 halves the bytes a forward reads, but on a CPU it only pays where
the cores multiply bf16 natively (AMX-BF16 or AVX512-BF16, used through
oneDNN's prepacked kernels): elsewhere oneDNN emulates it and a batch of
eight rows costs several times float32's (bench/results/*-bf16). So `auto`
means bfloat16 on such CPUs and on CUDA devices with bf16, float32 elsewhere.
"""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_CHOICES = ("auto",) + tuple(DTYPES)

# /proc/cpuinfo flags of native bf16 arithmetic.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags (empty where the file is absent)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """Native bf16 on this CPU, by torch's cpuid probe or the kernel's flags,
    and oneDNN present to use it."""
    if not torch.backends.mkldnn.is_available():
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(probe is not None and probe() for probe in probes):
        return True
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in FAST_BF16_CPU_FLAGS)


def fast_dtype_name(device: str) -> str:
    """The dtype `auto` stands for on `device`."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device == "cpu" and cpu_has_fast_bf16() else "float32"


def resolve_dtype_name(name: str, device: str) -> str:
    """`auto` -> the fast dtype of the device; any other name is checked and kept."""
    if name == "auto":
        return fast_dtype_name(device)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose from {DTYPE_CHOICES}")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`resolve_dtype("auto", "cpu")` -> torch.bfloat16 on AMX/AVX512-BF16 CPUs, else float32."""
    return DTYPES[resolve_dtype_name(name, device)]
