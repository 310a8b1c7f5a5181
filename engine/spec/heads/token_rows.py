"""Rows of a function of one token id, computed once per id and kept."""
from __future__ import annotations

from typing import Callable

import torch


class TokenRows:
    """Keeps `compute(ids)`'s row for each of the first `capacity` distinct
    ids looked up; later ids are computed on every lookup.

    `compute` maps ids [n] to rows [n, width] and must give an id the same
    row whatever else it is computed with, up to the kernel's rounding
    (rows are cached as first computed). Ids range over [0, num_ids).
    """

    def __init__(self, num_ids: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"TokenRows needs a capacity of at least one row, got {capacity}")
        self.num_ids, self.capacity = num_ids, capacity
        self.slots: torch.Tensor | None = None  # id -> its row in `rows`, -1 if not kept
        self.rows: torch.Tensor | None = None  # [capacity, width], allocated at the first lookup
        self.used = 0

    def lookup(self, ids: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """ids [...] long -> rows [..., width]."""
        flat = ids.reshape(-1)
        if self.slots is None:
            self.slots = torch.full((self.num_ids,), -1, dtype=torch.long, device=ids.device)
        slots = self.slots[flat]
        missing = slots < 0
        if bool(missing.any()):
            new = flat[missing].unique()
            if self.used + new.numel() > self.capacity:  # full: these are computed, not kept
                return compute(flat).view(*ids.shape, -1)
            self._keep(new, compute(new))
            slots = self.slots[flat]
        return self.rows[slots].view(*ids.shape, -1)

    def _keep(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        if self.rows is None:
            self.rows = rows.new_empty((self.capacity, rows.shape[-1]))
        kept = torch.arange(self.used, self.used + ids.numel(), device=ids.device)
        self.rows[kept] = rows
        self.slots[ids] = kept
        self.used += ids.numel()
