"""One request's grammar matcher, kept in step with its output tokens.

The matcher holds the grammar state after the request's accepted output
(`consumed` tokens) plus, transiently, tokens walked ahead of it (`ahead`):
draft tokens while their masks are computed. The three users:

- verification (`verify_masks` then `commit`): walk the verified drafts to
  get the mask of every verification row, then roll back exactly the
  rejected drafts and accept the recovered or bonus token;
- drafters (`begin_drafting`, `allowed`, `advance`, `end_drafting`): the
  drafter's q at each position is masked like the target's row there, so a
  sampled drafter never draws a forbidden token;
- the draft cut (`allowed_prefix`): how many drafts of a block the grammar
  allows, before the scheduler sees the block.

`sync` repairs any drift (a step that failed half-way, tokens dropped after
a stop) by rolling back or accepting until the matcher has exactly the
request's output.

After the grammar accepted a stop token the matcher is terminated: the
request finishes there, but rows after it may still be computed (the bonus
row after a drafted stop token). Their mask is the stop tokens alone, any
non-empty mask would do: nothing after a stop token is ever emitted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # imported where a matcher is built (grammar.py says why)
    import xgrammar as xgr

_BIT = None  # [32] int32 bit weights, built on first use


class GrammarError(RuntimeError):
    """A token the grammar forbids reached a place the masks should have kept it from."""


class RequestGrammar:
    """The xgrammar matcher of one request (see module doc)."""

    def __init__(self, compiled: xgr.CompiledGrammar, stop_token_ids: list[int], vocab_size: int,
                 max_rows: int, banned: torch.Tensor | None = None):
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_token_ids)
        self.vocab_size = vocab_size
        # Tokens forbidden on top of the grammar ([V] bool; grammar.py says why).
        self.banned = torch.zeros(vocab_size, dtype=torch.bool) if banned is None else banned
        self.stop_mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.stop_mask[stop_token_ids] = True
        self.consumed = 0  # output tokens in the matcher
        self.ahead = 0  # tokens walked beyond the output (drafts)
        self.blind = 0  # drafter tokens past a forbidden one (not in the matcher)
        self._bitmask = xgr.allocate_token_bitmask(max_rows, vocab_size)

    # -- keeping in step with the output --------------------------------------
    def sync(self, output_token_ids: list[int]) -> None:
        """Put the matcher exactly after `output_token_ids`."""
        self._retreat(self.ahead)
        self.blind = 0
        if self.consumed > len(output_token_ids):
            self.matcher.rollback(self.consumed - len(output_token_ids))
            self.consumed = len(output_token_ids)
        for token in output_token_ids[self.consumed:]:
            if not self._accept(token):
                raise GrammarError(f"output token {token} breaks the grammar")
            self.consumed += 1

    def _accept(self, token: int) -> bool:
        return not self.matcher.is_terminated() and self.matcher.accept_token(token)

    def _retreat(self, count: int) -> None:
        if count:
            self.matcher.rollback(count)
            self.ahead -= count

    # -- verification -----------------------------------------------------------
    def verify_masks(self, output_token_ids: list[int], drafts: list[int]) -> torch.Tensor:
        """[len(drafts) + 1, V] bool: the allowed tokens of the anchor row and
        of the row after each draft. Leaves the matcher after all drafts."""
        self.sync(output_token_ids)
        if len(drafts) + 1 > self._bitmask.shape[0]:
            import xgrammar as xgr

            self._bitmask = xgr.allocate_token_bitmask(len(drafts) + 1, self.vocab_size)
        rows = [self._fill(0)]
        for j, token in enumerate(drafts):
            if not self._accept(token):
                raise GrammarError(f"draft token {token} the grammar forbids reached verification")
            self.ahead += 1
            rows.append(self._fill(j + 1))
        return self._unpack(rows)

    def commit(self, num_accepted: int, final_token: int) -> None:
        """After verification: roll back the rejected drafts, keep the
        accepted ones and accept the recovered or bonus token."""
        self._retreat(self.ahead - num_accepted)
        self.consumed, self.ahead = self.consumed + self.ahead, 0
        if self.matcher.is_terminated():
            return  # a stop token was accepted: the request ends before final_token
        if not self._accept(final_token):
            raise GrammarError(f"sampled token {final_token} breaks the grammar")
        self.consumed += 1

    # -- drafting ---------------------------------------------------------------
    def begin_drafting(self, output_token_ids: list[int]) -> None:
        self.sync(output_token_ids)

    def allowed(self) -> torch.Tensor:
        """[V] bool: the tokens allowed after the output and the drafts walked so far."""
        if self.blind:
            return self.stop_mask
        return self._unpack([self._fill(0)])[0]

    def advance(self, token: int) -> bool:
        """Walk one draft token; False (and blind from then on) if forbidden."""
        if self.blind or not self._accept(token):
            self.blind += 1
            return False
        self.ahead += 1
        return True

    def end_drafting(self) -> None:
        self._retreat(self.ahead)
        self.blind = 0

    def allowed_prefix(self, output_token_ids: list[int], drafts: list[int]) -> tuple[int, bool]:
        """How many leading drafts the grammar allows, and whether the first
        forbidden one (if any) comes after the grammar terminated."""
        self.sync(output_token_ids)
        count = 0
        for token in drafts:
            if self.matcher.is_terminated() or self.banned[token] or not self._accept(token):
                break
            self.ahead += 1
            count += 1
        after_stop = self.matcher.is_terminated()
        self._retreat(self.ahead)
        return count, after_stop

    # -- masks --------------------------------------------------------------------
    def _fill(self, row: int) -> int:
        """Fill bitmask row `row` with the current mask; -1 when terminated."""
        if self.matcher.is_terminated():
            return -1
        self.matcher.fill_next_token_bitmask(self._bitmask, row)
        return row

    def _unpack(self, rows: list[int]) -> torch.Tensor:
        """Bitmask rows (-1: stop tokens only) -> [len(rows), V] bool."""
        global _BIT
        if _BIT is None:
            _BIT = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32)
        filled = [r for r in rows if r >= 0]
        masks = self.stop_mask.expand(len(rows), -1).clone()
        if filled:
            words = self._bitmask[filled]  # [F, W] int32, bit i of word w = token 32 w + i
            bits = (words[:, :, None] & _BIT) != 0
            unpacked = bits.reshape(len(filled), -1)[:, : self.vocab_size]
            masks[[i for i, r in enumerate(rows) if r >= 0]] = unpacked & ~self.banned
        return masks
