"""A smaller model (or the target's own first layers) drafting autoregressively.

The drafter keeps its own paged KV cache with the same block geometry as the
target and reuses the target's block tables, so the scheduler allocates for
both (plus `num_lookahead_slots` for the positions drafted ahead). Drafted
positions' KV is speculative: the next call re-feeds the tokens that were
actually accepted, which is the drafter's roll-back.
"""
from __future__ import annotations

import torch

from engine.kv_cache import allocate_kv_caches
from engine.sampler import RowContext, target_probs
from engine.spec.base import DraftInput, DraftProposal, Drafter
from kernels.attention import AttentionMetadata


class ModelDrafter(Drafter):
    """Drafts with `model` (its first `num_layers` layers when given)."""

    def __init__(self, model, model_config, num_blocks: int, block_size: int, max_draft: int,
                 dtype: torch.dtype, device: str, num_layers: int | None = None):
        self.model = model
        self.num_layers = num_layers
        self.block_size = block_size
        self.device = device
        self.num_lookahead_slots = max_draft
        self.kv_caches = allocate_kv_caches(model_config, num_blocks, block_size, dtype, device,
                                            num_layers=num_layers)
        self.num_computed: dict[str, int] = {}  # tokens whose KV in our cache is real

    def free(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.num_computed.pop(rid, None)

    @torch.inference_mode()
    def propose(self, inputs: list[DraftInput], block_tables: dict[str, list[int]]) -> dict[str, DraftProposal]:
        drafts = {item.request.request_id: _DraftState(item) for item in inputs if item.max_tokens > 0}
        pending = {rid: state.request.token_ids(self.num_computed.get(rid, 0))
                   for rid, state in drafts.items()}
        starts = {rid: self.num_computed.get(rid, 0) for rid in drafts}
        for rid, state in drafts.items():
            self.num_computed[rid] = state.request.num_tokens
        while pending:
            order = list(pending)
            logits = self._forward(order, pending, starts, block_tables)
            self._extend(order, logits, drafts)
            for rid in order:
                starts[rid] += len(pending[rid])
            pending = {rid: [drafts[rid].token_ids[-1]] for rid in order if not drafts[rid].done}
        return {rid: state.proposal() for rid, state in drafts.items()}

    def _forward(self, order, pending, starts, block_tables) -> torch.Tensor:
        """One packed forward; returns the logits of each request's last row."""
        tokens, positions, query_lens, seq_lens, last_rows = [], [], [], [], []
        for rid in order:
            feed, start = pending[rid], starts[rid]
            tokens.extend(feed)
            positions.extend(range(start, start + len(feed)))
            query_lens.append(len(feed))
            seq_lens.append(start + len(feed))
            last_rows.append(len(tokens) - 1)
        meta = AttentionMetadata.build(query_lens, seq_lens, [block_tables[r] for r in order],
                                       self.block_size, self.device)
        hidden, _ = self.model(torch.tensor(tokens, device=self.device),
                               torch.tensor(positions, device=self.device),
                               self.kv_caches, meta, num_layers=self.num_layers)
        return self.model.compute_logits(hidden[last_rows])

    def _extend(self, order, logits: torch.Tensor, drafts) -> None:
        """Sample one draft token per request from the draft distribution
        under the request's own sampling transforms."""
        rows = [drafts[rid].row_context() for rid in order]
        probs = target_probs(logits, rows)
        raw = torch.softmax(logits.float(), dim=-1)
        for i, rid in enumerate(order):
            state = drafts[rid]
            if state.request.sampling_params.greedy:
                token = int(torch.argmax(probs[i]))
            else:
                token = int(torch.multinomial(probs[i], 1, generator=state.generator))
            state.add(token, probs[i], float(raw[i, token]))


class _DraftState:
    """Tokens, distributions and confidences drafted so far for one request."""

    def __init__(self, item: DraftInput):
        self.request = item.request
        self.limit = item.max_tokens
        self.generator = item.generator
        self.token_ids: list[int] = []
        self.probs: list[torch.Tensor] = []
        self.confidences: list[float] = []

    @property
    def done(self) -> bool:
        return len(self.token_ids) >= self.limit

    def row_context(self) -> RowContext:
        req = self.request
        return RowContext(req.sampling_params, req.prompt_token_ids, req.output_token_ids + self.token_ids)

    def add(self, token: int, probs: torch.Tensor, confidence: float) -> None:
        self.token_ids.append(token)
        self.probs.append(probs)
        self.confidences.append(confidence)

    def proposal(self) -> DraftProposal:
        return DraftProposal(self.token_ids, torch.stack(self.probs), self.confidences)
