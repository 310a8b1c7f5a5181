"""Count device->host synchronisations on CPU by instrumenting the ways a
tensor's values reach Python.

On CUDA each of these waits for the device queue to drain (the host needs
the values); on CPU they are free, so a CPU test can only see them by
counting calls. Counted: `item`, `tolist`, `numpy`, `cpu`, `to` the host
from another device, `__bool__`/`__int__`/`__float__`/`__index__`, `nonzero`,
`masked_select`, `unique`, `torch.equal`/`allclose`, indexing with a boolean mask or a Python
list, and `repeat_interleave` without `output_size` (whose output shape needs the
values); and `torch.tensor(..., device=...)` called anywhere but in
kernels/to_device.py: on CUDA that is a blocking host->device copy, which
waits for the stream (to_device stages in pinned memory and copies
asynchronously there). Conversions that happen while a counted conversion runs (torch's
own Python code calling another) count once.

`SyncCounter.region(obj, name)` wraps a method so that conversions inside
it are also counted in a separate bucket (e.g. the model forward).
"""
from __future__ import annotations

import contextlib
import functools
from collections import Counter

import torch

_TENSOR_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
                   "nonzero", "masked_select", "unique")
_TORCH_FUNCTIONS = ("nonzero", "masked_select", "unique", "equal", "allclose", "argwhere")


class SyncCounter:
    """Counts host conversions while active; `.total`, `.by_kind`, and
    per-region counts in `.regions`."""

    def __init__(self):
        self.by_kind: Counter = Counter()
        self.regions: Counter = Counter()
        self._active_regions: list[str] = []
        self._depth = 0
        self._patches: list[tuple[object, str, object]] = []
        self.trace = False
        self.traces: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def reset(self) -> None:
        self.by_kind.clear()
        self.regions.clear()
        self.traces.clear()

    def _record(self, kind: str) -> None:
        self.by_kind[kind] += 1
        for region in set(self._active_regions):
            self.regions[region] += 1
        if self.trace:
            import traceback
            self.traces.append(kind + "\n" + "".join(traceback.format_stack(limit=8)[:-2]))

    def _counted(self, kind: str, original, condition=None):
        counter = self

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if counter._depth == 0 and (condition is None or condition(*args, **kwargs)):
                counter._record(kind)
            counter._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                counter._depth -= 1
        return wrapper

    def _patch(self, owner, name: str, replacement) -> None:
        self._patches.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, replacement)

    def __enter__(self) -> "SyncCounter":
        for name in _TENSOR_METHODS:
            self._patch(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        self._patch(torch.Tensor, "to", self._counted("to(cpu)", torch.Tensor.to, _to_host))
        self._patch(torch.Tensor, "__getitem__",
                    self._counted("mask/list index", torch.Tensor.__getitem__, _host_index))
        self._patch(torch.Tensor, "repeat_interleave",
                    self._counted("repeat_interleave", torch.Tensor.repeat_interleave, _needs_output_size))
        for name in _TORCH_FUNCTIONS:
            self._patch(torch, name, self._counted(f"torch.{name}", getattr(torch, name)))
        self._patch(torch, "tensor", self._counted("torch.tensor(device=)", torch.tensor, _blocking_upload))
        self._patch(torch, "repeat_interleave",
                    self._counted("repeat_interleave", torch.repeat_interleave, _needs_output_size))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._patches):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._patches.clear()

    def region(self, owner, name: str, label: str | None = None) -> None:
        """Count conversions inside `owner.name(...)` also under `label`."""
        original = getattr(owner, name)
        label = label or name
        counter = self

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            counter._active_regions.append(label)
            try:
                return original(*args, **kwargs)
            finally:
                counter._active_regions.pop()
        self._patches.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, wrapper)

    @contextlib.contextmanager
    def counting(self, label: str):
        """Count what runs inside the block under `label` too."""
        self._active_regions.append(label)
        try:
            yield
        finally:
            self._active_regions.pop()


_MISSING = object()
_TO_DEVICE_FILE = __import__("kernels.to_device", fromlist=["to_device"]).__file__


def _to_host(self, *args, **kwargs) -> bool:
    """A copy from a device to the host. (On a CPU-only run `.to(device)`
    cannot be told apart from `.to("cpu")`; `cpu()`/`numpy()` are counted.)"""
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, torch.Tensor):
        target = target.device
    if not isinstance(target, (str, torch.device)):
        return False
    try:
        return torch.device(target).type == "cpu" and self.device.type != "cpu"
    except (RuntimeError, TypeError):
        return False


def _blocking_upload(*args, **kwargs) -> bool:
    """torch.tensor with a device: a blocking copy on CUDA, unless it comes
    from kernels/to_device.py (which uses pinned memory there)."""
    if kwargs.get("device") is None:
        return False
    import sys
    return sys._getframe(2).f_code.co_filename != _TO_DEVICE_FILE


def _host_index(self, index) -> bool:
    """A boolean mask (its count decides the shape) or a Python list of
    indices (copied to the device with a blocking copy)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) or isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _needs_output_size(*args, **kwargs) -> bool:
    repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
    return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
