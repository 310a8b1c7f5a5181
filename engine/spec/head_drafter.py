"""Serving an EAGLE-3, DFlash or DSpark head as a Drafter.

The engine's runner hands each request the target's hidden states of the
tokens that got KV since the previous propose() (`DraftInput.new_hidden`,
the head's `aux_layers` concatenated). The drafter turns them into its own
per-request context once, and keeps it until free(): how is the head
family's business (`DraftHead.absorb_context`: projected context
keys/values per layer for the block heads, the head's own KV cache for
EAGLE-3). Only
verified tokens ever reach that state (the runner sends features of
accepted tokens only), so speculative state lives inside one propose()
call and needs no roll-back. Drafting itself is the family's `draft`
routine over a DraftBatch (engine/spec/heads/drafting.py), which samples
every draft under the request's own sampling transforms.
"""
from __future__ import annotations

import torch

from engine.spec.base import DraftInput, DraftProposal, Drafter
from engine.spec.heads.base import DraftHead
from engine.spec.heads.checkpoint import load_head
from engine.spec.heads.drafting import DraftBatch, RequestState


class HeadDrafter(Drafter):
    """Drafts with a trained EAGLE-3, DFlash or DSpark head.

    Confidences: DSpark's confidence head; for EAGLE-3 and DFlash the head's
    untransformed probability of the drafted token. Either is then scaled
    per position by the checkpoint's STS temperatures, if calibrated.
    """

    num_lookahead_slots = 0  # the head keeps its own state; no target KV slots

    def __init__(self, head: DraftHead):
        if head.shared is None:
            raise ValueError("HeadDrafter needs a head attached to its target (attach_target)")
        self.head = head.eval()
        self.aux_layers = tuple(head.config.aux_layers)
        self.temperatures = head.config.calibration
        self.states: dict[str, RequestState] = {}
        self.dtype = head.norm.weight.dtype

    @classmethod
    def from_checkpoint(cls, path: str, target_model, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "HeadDrafter":
        return cls(load_head(path, target_model, dtype, device))

    def free(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.states.pop(rid, None)

    @torch.inference_mode()
    def propose(self, inputs: list[DraftInput], block_tables=None) -> dict[str, DraftProposal]:
        items = [item for item in inputs if item.max_tokens > 0]
        if not items:
            return {}
        states = [self._absorb_checked(item) for item in items]
        batch = DraftBatch(items, states, self.temperatures)
        self.head.draft(batch)
        return batch.proposals()

    def _absorb_checked(self, item: DraftInput) -> RequestState:
        """Fold the request's new target features into its state."""
        request = item.request
        state = self.states.setdefault(request.request_id, RequestState())
        new = item.new_hidden
        n = 0 if new is None else new.shape[0]
        if state.num_context + n != request.num_computed_tokens:
            raise RuntimeError(
                f"request {request.request_id}: drafter holds features of {state.num_context} positions "
                f"and got {n} more, but {request.num_computed_tokens} tokens have KV")
        if request.num_computed_tokens != request.num_tokens - 1 or request.num_computed_tokens == 0:
            raise RuntimeError(f"request {request.request_id}: drafting needs features of every token "
                               f"but the last ({request.num_computed_tokens} of {request.num_tokens})")
        if n:
            self.head.absorb_context(state, request, new.to(self.dtype))
            state.num_context += n
        return state
