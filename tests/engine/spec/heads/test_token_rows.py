"""TokenRows: a token's row is computed once and returned as first computed."""
from __future__ import annotations

import pytest
import torch

from engine.spec.heads.token_rows import TokenRows

TABLE = torch.arange(40.0).view(10, 4)  # id -> its row


class Counting:
    """TABLE's rows, counting the ids computed."""

    def __init__(self):
        self.computed: list[int] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.computed += ids.tolist()
        return TABLE[ids]


def test_rows_are_the_function_s_and_kept_ids_are_not_computed_again():
    rows, compute = TokenRows(capacity=4), Counting()
    ids = torch.tensor([[3, 3], [7, 1]])
    assert torch.equal(rows.lookup(ids, compute), TABLE[ids])
    assert compute.computed == [3, 3, 7, 1]  # one call for the lookup
    assert torch.equal(rows.lookup(torch.tensor([7, 3, 1]), compute), TABLE[[7, 3, 1]])
    assert compute.computed == [3, 3, 7, 1] and rows.used == 3  # all kept


def test_ids_past_the_capacity_are_computed_every_time_and_rows_stay_right():
    rows, compute = TokenRows(capacity=2), Counting()
    rows.lookup(torch.tensor([0, 1]), compute)
    for _ in range(2):
        assert torch.equal(rows.lookup(torch.tensor([1, 5]), compute), TABLE[[1, 5]])
    assert compute.computed == [0, 1, 1, 5, 1, 5]
    assert rows.used == 2


def test_a_row_is_kept_as_first_computed():
    rows = TokenRows(capacity=4)
    rows.lookup(torch.tensor([2]), lambda ids: TABLE[ids])
    assert torch.equal(rows.lookup(torch.tensor([2]), lambda ids: TABLE[ids] + 1), TABLE[[2]])


def test_needs_room_for_a_row():
    with pytest.raises(ValueError, match="capacity"):
        TokenRows(capacity=0)
