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
from engine.models.loader import LoadedModel, load_model
from engine.sampler import RowContext, target_probs
from engine.spec.base import DraftInput, Drafter
from engine.spec.draw import begin_grammars, draw_drafts, end_grammars, grammar_mask, walk_grammar
from engine.spec.registry import DrafterContext, register_drafter
from kernels.attention import AttentionMetadata
from scheduler.drafts import DraftBlock


class ModelDrafter(Drafter):
    """Drafts with `model` (its first `num_layers` layers when given).

    Confidence of draft k is the largest probability of the draft model's
    distribution at that position: a property of the distribution the draft
    is drawn from, not of the drawn token (speculation.md §4).
    """

    name = "draft-model"

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

    def absorb(self, request, hidden=None) -> None:
        """Nothing to do now: the next propose() re-feeds the tokens confirmed
        since this drafter's KV was last real (its roll-back)."""

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.num_computed.pop(rid, None)

    @torch.inference_mode()
    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        begin_grammars(inputs)
        try:
            return self._propose(inputs)
        finally:
            end_grammars(inputs)

    def _propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        drafts = {item.request.request_id: _DraftState(item) for item in inputs if item.max_tokens > 0}
        block_tables = {item.request.request_id: item.block_ids for item in inputs}
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
        return {rid: state.proposal(self.name) for rid, state in drafts.items()}

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
        """Draw one draft token per request from the draft distribution
        under the request's own sampling transforms (engine/spec/draw.py)."""
        states = [drafts[rid] for rid in order]
        probs = target_probs(logits, [state.row_context() for state in states])
        # The draft model's own belief, before the request's transforms
        # (those make greedy rows one-hot).
        peak = torch.softmax(logits.float(), dim=-1).amax(dim=-1).tolist()
        tokens = draw_drafts(probs, [state.item for state in states], [len(state.token_ids) for state in states])
        for i, state in enumerate(states):
            state.add(tokens[i], probs[i], peak[i])


class _DraftState:
    """Tokens, distributions and confidences drafted so far for one request."""

    def __init__(self, item: DraftInput):
        self.item = item
        self.request = item.request
        self.limit = item.max_tokens
        self.token_ids: list[int] = []
        self.probs: list[torch.Tensor] = []
        self.confidences: list[float] = []

    @property
    def done(self) -> bool:
        return len(self.token_ids) >= self.limit

    def row_context(self) -> RowContext:
        return RowContext.for_request(self.request, self.token_ids, grammar_mask(self.item))

    def add(self, token: int, probs: torch.Tensor, confidence: float) -> None:
        walk_grammar(self.item, token)
        self.token_ids.append(token)
        self.probs.append(probs)
        self.confidences.append(confidence)

    def proposal(self, source: str) -> DraftBlock:
        return DraftBlock(self.token_ids, self.confidences, torch.stack(self.probs), source)


@register_drafter("draft-model", needs_draft_model=True,
                  help="a smaller model with the target's tokenizer (--draft-model DIR)")
def _build_draft_model(context: DrafterContext) -> Drafter:
    config = context.config
    draft = load_model(config.speculative.draft_model, context.dtype, config.device)
    check_same_vocabulary(context.target, draft)
    return ModelDrafter(draft.model, draft.config, context.num_blocks, config.cache.block_size,
                        config.speculative.num_speculative_tokens, context.dtype, config.device)


@register_drafter("self-draft", help="the target's first layers with its final norm and LM head")
def _build_self_draft(context: DrafterContext) -> Drafter:
    config, target = context.config, context.target
    layers = config.speculative.self_draft_layers or max(1, target.config.num_layers // 3)
    if layers >= target.config.num_layers:
        raise ValueError("self-draft needs fewer layers than the target has")
    drafter = ModelDrafter(target.model, target.config, context.num_blocks, config.cache.block_size,
                           config.speculative.num_speculative_tokens, context.dtype, config.device,
                           num_layers=layers)
    drafter.name = "self-draft"
    return drafter


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """A draft model must share the target's tokenizer: token ids are compared."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft model vocabulary ({draft.config.vocab_size}) differs from the "
                         f"target's ({target.config.vocab_size})")
    probe = "Hello, world! 123 def f(x): return x"
    if draft.tokenizer.encode(probe) != target.tokenizer.encode(probe):
        raise ValueError("draft model tokenizer differs from the target's")
