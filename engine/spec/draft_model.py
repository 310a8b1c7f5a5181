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
from engine.transfer import fetch
from kernels.attention import AttentionMetadata
from kernels.to_device import to_device
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
        """Draft for every input; the drafted tokens stay on the device until
        the last draft is drawn, then reach the host in one transfer.
        Constrained requests' matchers walk the drafts and are rolled back
        to the request's output afterwards (drafts are unverified)."""
        begin_grammars(inputs)
        try:
            return self._propose(inputs)
        finally:
            end_grammars(inputs)

    def _propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        drafts = {item.request.request_id: _DraftState(item) for item in inputs if item.max_tokens > 0}
        block_tables = {item.request.request_id: item.block_ids for item in inputs}
        pending = {rid: state.request.token_ids(self.num_computed.get(rid, 0)) for rid, state in drafts.items()}
        starts = {rid: self.num_computed.get(rid, 0) for rid in drafts}
        for rid, state in drafts.items():
            self.num_computed[rid] = state.request.num_tokens
        feed_lens = {rid: len(tokens) for rid, tokens in pending.items()}
        feed = to_device([t for tokens in pending.values() for t in tokens], dtype=torch.long, device=self.device)
        draws = _Draws()
        while feed_lens:
            order = list(feed_lens)
            logits = self._forward(order, feed, feed_lens, starts, block_tables)
            tokens = self._extend(order, logits, drafts, draws)
            for rid in order:
                starts[rid] += feed_lens[rid]
            going = [i for i, rid in enumerate(order) if not drafts[rid].done]
            feed = tokens[to_device(going, dtype=torch.long, device=self.device)]
            feed_lens = {order[i]: 1 for i in going}
        draws.fetch(drafts.values())
        return {rid: state.proposal(self.name) for rid, state in drafts.items()}

    def _forward(self, order, feed: torch.Tensor, feed_lens, starts, block_tables) -> torch.Tensor:
        """One packed forward of `feed` (each request's tokens, in `order`);
        returns the logits of each request's last row."""
        positions, query_lens, seq_lens, last_rows = [], [], [], []
        for rid in order:
            count, start = feed_lens[rid], starts[rid]
            positions.extend(range(start, start + count))
            query_lens.append(count)
            seq_lens.append(start + count)
            last_rows.append(len(positions) - 1)
        meta = AttentionMetadata.build(query_lens, seq_lens, [block_tables[r] for r in order],
                                       self.block_size, self.device)
        hidden, _ = self.model(feed, to_device(positions, device=self.device),
                               self.kv_caches, meta, num_layers=self.num_layers)
        return self.model.compute_logits(hidden[to_device(last_rows, torch.long, self.device)])

    def _extend(self, order, logits: torch.Tensor, drafts, draws: "_Draws") -> torch.Tensor:
        """Draw one draft token per request from the draft distribution
        under the request's own sampling transforms (engine/spec/draw.py);
        returns them [R] on the device."""
        states = [drafts[rid] for rid in order]
        probs = target_probs(logits, [state.row_context() for state in states])
        # The draft model's own belief, before the request's transforms
        # (those make greedy rows one-hot).
        peak = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        tokens = draw_drafts(probs, [state.item for state in states], [state.count for state in states])
        slots = draws.add(tokens, peak)
        for i, state in enumerate(states):
            state.add(slots[i], probs[i])
        if any(state.request.sampling_params.has_penalties or state.item.grammar is not None
               for state in states):
            # Penalties count the drafts before a row on the host (sampler) and
            # a grammar's next mask follows the draft: with such a request each
            # draft position costs a sync.
            draws.fetch(states)
            for state in states:
                walk_grammar(state.item, state.token_ids[-1])
        return tokens


class _Draws:
    """Every token and confidence drafted in one propose(), kept on the
    device and read back together."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []
        self.peaks: list[torch.Tensor] = []
        self.size = 0

    def add(self, tokens: torch.Tensor, peaks: torch.Tensor) -> range:
        """Store one round's draws; returns their slots."""
        self.tokens.append(tokens)
        self.peaks.append(peaks)
        self.size += tokens.shape[0]
        return range(self.size - tokens.shape[0], self.size)

    def fetch(self, states) -> None:
        """One device->host transfer; fills each state's tokens and confidences."""
        if not self.tokens:
            return
        host = fetch({"tokens": torch.cat(self.tokens), "peaks": torch.cat(self.peaks)})
        for state in states:
            state.token_ids = [host["tokens"][slot] for slot in state.slots]
            state.confidences = [host["peaks"][slot] for slot in state.slots]


class _DraftState:
    """Tokens, distributions and confidences drafted so far for one request
    (token ids and confidences on the host once `_Draws.fetch` ran)."""

    def __init__(self, item: DraftInput):
        self.item = item
        self.request = item.request
        self.limit = item.max_tokens
        self.slots: list[int] = []  # where this request's drafts sit in _Draws
        self.token_ids: list[int] = []
        self.probs: list[torch.Tensor] = []
        self.confidences: list[float] = []

    @property
    def count(self) -> int:
        return len(self.slots)

    @property
    def done(self) -> bool:
        return self.count >= self.limit

    def row_context(self) -> RowContext:
        # token_ids is current whenever penalties or a grammar read it
        # (_extend fetches then).
        return RowContext.for_request(self.request, self.token_ids, grammar_mask(self.item))

    def add(self, slot: int, probs: torch.Tensor) -> None:
        self.slots.append(slot)
        self.probs.append(probs)

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
