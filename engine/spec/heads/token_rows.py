"""Rows of a function of one token id, computed once per id and kept."""
from __future__ import annotations

from typing import Callable

import torch


class TokenRows:
    """Keeps `compute(ids)`'s row for each of the first `capacity` distinct
    ids looked up; later ids are computed on every lookup.

    `compute` maps ids [n] to rows [n, width] and must give an id the same
    row whatever else it is computed with, up to the kernel's rounding:
    a lookup with any id not kept computes all its ids in one call (a
    product over a few rows costs what one row does), and returns those
    rows. Meant for the few ids of one drafting step, so the bookkeeping
    is plain Python.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"TokenRows needs a capacity of at least one row, got {capacity}")
        self.capacity = capacity
        self.slots: dict[int, int] = {}  # id -> its row in `rows`
        self.rows: torch.Tensor | None = None  # [capacity, width], allocated at the first lookup

    @property
    def used(self) -> int:
        return len(self.slots)

    def lookup(self, ids: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """ids [...] long -> rows [..., width]."""
        flat = ids.reshape(-1)
        tokens = flat.tolist()
        slots = [self.slots.get(token) for token in tokens]
        if None in slots:
            rows = compute(flat)
            self._keep(tokens, rows)
            return rows.view(*ids.shape, -1)
        index = torch.tensor(slots, device=self.rows.device)
        return self.rows.index_select(0, index).view(*ids.shape, -1)

    def _keep(self, tokens: list[int], rows: torch.Tensor) -> None:
        if self.rows is None:
            self.rows = rows.new_empty((self.capacity, rows.shape[-1]))
        for index, token in enumerate(tokens):
            if token not in self.slots and self.used < self.capacity:
                self.rows[self.used] = rows[index]
                self.slots[token] = self.used
