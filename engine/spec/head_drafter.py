"""Serving an EAGLE-3, DFlash or DSpark head as a Drafter.

After each step the engine hands the drafter the target's hidden states of
the tokens that got KV (`absorb`, the head's `aux_layers` concatenated). The
drafter folds them into its own per-request context when the request next
drafts, and keeps it until forget(): how is the head family's business
(`DraftHead.absorb_context`: projected context keys/values per layer for
the block heads, the head's own KV cache for EAGLE-3). Only verified tokens
ever reach that state, so speculative state lives inside one propose() call
and needs no roll-back. Drafting itself is the family's `draft` routine over
a DraftBatch (engine/spec/heads/drafting.py), which samples every draft
under the request's own sampling transforms.
"""
from __future__ import annotations

import time

import torch

from engine.spec.base import DraftInput, Drafter
from engine.spec.draw import begin_grammars, end_grammars
from engine.spec.heads.base import DraftHead
from engine.spec.heads.checkpoint import load_head
from engine.spec.heads.drafting import DraftBatch, RequestState
from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.registry import DrafterContext, register_drafter
from scheduler.drafts import DraftBlock


class HeadDrafter(Drafter):
    """Drafts with a trained EAGLE-3, DFlash or DSpark head.

    Confidences: DSpark's confidence head (built from the block state and
    the previous draft); for EAGLE-3 and DFlash the largest probability of
    the head's untransformed distribution at that position, never the
    probability of the drawn token (speculation.md §4). Either is then
    scaled per position by the checkpoint's STS temperatures, if calibrated:
    the set fitted at temperature 0 for greedy requests, the one fitted
    nearest to the request's temperature for sampled ones.
    """

    num_lookahead_slots = 0  # the head keeps its own state; no target KV slots

    def __init__(self, head: DraftHead):
        if head.shared is None:
            raise ValueError("HeadDrafter needs a head attached to its target (attach_target)")
        self.head = head.eval()
        self.name = head.config.method
        self.aux_layers = tuple(head.config.aux_layers)
        self.max_draft_tokens = head.config.block_size
        self.calibration = head.config.calibration  # None: raw confidences
        self.states: dict[str, RequestState] = {}
        self.pending_hidden: dict[str, list[torch.Tensor]] = {}  # absorbed, not yet folded in
        # The last propose's folding of new features: (seconds, positions folded).
        self.last_fold: tuple[float, int] = (0.0, 0)
        self.dtype, self.device = head.norm.weight.dtype, head.norm.weight.device

    @classmethod
    def from_checkpoint(cls, path: str, target_model, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "HeadDrafter":
        head = load_head(path, target_model, dtype, device)
        head.use_inference_kernels()
        return cls(head)

    def absorb(self, request, hidden: torch.Tensor | None) -> None:
        """Keep the new features; they are folded into the request's state
        when it next drafts (one pass over all new positions)."""
        if hidden is None:
            raise RuntimeError(f"request {request.request_id}: {self.name} drafting needs target features")
        self.pending_hidden.setdefault(request.request_id, []).append(hidden)

    def backlog(self, request) -> int:
        """Positions with KV whose features the head has not folded in yet:
        what its next run for `request` folds first."""
        state = self.states.get(request.request_id)
        return request.num_computed_tokens - (state.num_context if state else 0)

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.states.pop(rid, None)
            self.pending_hidden.pop(rid, None)

    @torch.inference_mode()
    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        items = [item for item in inputs if item.max_tokens > 0]
        if not items:
            return {}
        started = time.perf_counter()
        folded = [self._absorb_checked(item) for item in items]
        states = [state for state, _ in folded]
        self.last_fold = (time.perf_counter() - started, sum(n for _, n in folded))
        batch = DraftBatch(items, states, self.calibration, self.name)
        begin_grammars(items)
        try:
            self.head.draft(batch)
        finally:
            end_grammars(items)
        return batch.proposals()

    def _absorb_checked(self, item: DraftInput) -> tuple[RequestState, int]:
        """Fold the request's new target features into its state; returns it
        and the number of positions folded."""
        request = item.request
        state = self.states.setdefault(request.request_id, RequestState())
        pieces = self.pending_hidden.pop(request.request_id, None)
        new = torch.cat(pieces) if pieces else None
        n = 0 if new is None else new.shape[0]
        if state.num_context + n != request.num_computed_tokens:
            raise RuntimeError(
                f"request {request.request_id}: drafter holds features of {state.num_context} positions "
                f"and got {n} more, but {request.num_computed_tokens} tokens have KV")
        if request.num_computed_tokens != request.num_tokens - 1 or request.num_computed_tokens == 0:
            raise RuntimeError(f"request {request.request_id}: drafting needs features of every token "
                               f"but the last ({request.num_computed_tokens} of {request.num_tokens})")
        if n:
            self.head.absorb_context(state, request, new.to(self.device, self.dtype))
            state.num_context += n
        return state, n


def _build_head_drafter(context: DrafterContext) -> Drafter:
    """A trained head; its checkpoint must be of the method asked for."""
    config = context.config
    method, path = config.speculative.method, config.speculative.draft_model
    drafter = HeadDrafter.from_checkpoint(path, context.target.model, context.dtype, config.device)
    if drafter.name != method:
        raise ValueError(f"{path} holds a {drafter.name} head, not {method}")
    return drafter


for _method in HEAD_METHODS:
    register_drafter(_method, needs_draft_model=True,
                     help=f"a trained {_method} head (--draft-model CHECKPOINT_DIR)")(_build_head_drafter)
