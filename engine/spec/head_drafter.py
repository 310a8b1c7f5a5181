"""Serving an EAGLE-3, DFlash or DSpark head as a Drafter.

The engine's runner hands each request the target's hidden states of the
tokens that got KV since the previous propose() (`DraftInput.new_hidden`,
the head's `aux_layers` concatenated). The drafter turns them into its own
per-request context once, and keeps it until free(): projected context
keys/values per layer for the block heads, the head's own KV cache for
EAGLE-3. Only verified tokens ever reach that state (the runner sends
features of accepted tokens only), so speculative state lives inside one
propose() call and needs no roll-back.

Every draft is sampled from `probs[k]`, the head's distribution after the
request's own sampling transforms (engine.sampler.target_probs with the
drafts before it counted as output), so rejection sampling stays exact.
"""
from __future__ import annotations

import math

import torch

from engine.sampler import RowContext, target_probs
from engine.spec.base import DraftInput, Drafter
from engine.spec.heads import METHODS, BlockHead, DraftHead, DSparkHead, Eagle3Head, load_head
from engine.spec.registry import DrafterContext, register_drafter
from scheduler.drafts import DraftBlock

class GrowingKV:
    """Keys and values of one layer for one request, appended in place
    (capacity doubles, so appending n entries costs O(n) amortised)."""

    def __init__(self, like: torch.Tensor):  # like: [n, kvh, hd]
        self.length = 0
        self.keys = like.new_empty((0, *like.shape[1:]))
        self.values = like.new_empty((0, *like.shape[1:]))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [n, kvh, hd]."""
        need = self.length + k.shape[0]
        if need > self.keys.shape[0]:
            capacity = max(need, 2 * self.keys.shape[0], 64)
            self.keys = _grow(self.keys, capacity, self.length)
            self.values = _grow(self.values, capacity, self.length)
        self.keys[self.length:need] = k
        self.values[self.length:need] = v
        self.length = need

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[: self.length], self.values[: self.length]


def _grow(buffer: torch.Tensor, capacity: int, used: int) -> torch.Tensor:
    bigger = buffer.new_empty((capacity, *buffer.shape[1:]))
    bigger[:used] = buffer[:used]
    return bigger


class RequestState:
    """What the drafter keeps for one request between steps."""

    def __init__(self):
        self.num_context = 0  # positions whose target features were absorbed
        self.kv: list[GrowingKV] | None = None  # per head layer
        self.last_out: torch.Tensor | None = None  # EAGLE-3: output at the last context entry [H]
        self.last_context: torch.Tensor | None = None  # block heads: context vector of the last position [H]


class _Batch:
    """Drafts being built for the requests of one propose() call."""

    def __init__(self, items: list[DraftInput], states: list[RequestState], source: str):
        self.source = source
        self.items, self.states = items, states
        self.tokens: list[list[int]] = [[] for _ in items]
        self.probs: list[list[torch.Tensor]] = [[] for _ in items]
        self.confidences: list[list[float]] = [[] for _ in items]

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def longest(self) -> int:
        return max(item.max_tokens for item in self.items)

    def row_contexts(self) -> list[RowContext]:
        """Sampling context of each request's next draft position."""
        return [RowContext(i.request.sampling_params, i.request.prompt_token_ids,
                           i.request.output_token_ids + drafted)
                for i, drafted in zip(self.items, self.tokens)]

    def add(self, index: int, token: int, probs: torch.Tensor, confidence: float) -> None:
        if len(self.tokens[index]) < self.items[index].max_tokens:
            self.tokens[index].append(token)
            self.probs[index].append(probs)
            self.confidences[index].append(confidence)

    def proposals(self) -> dict[str, DraftBlock]:
        return {item.request.request_id: DraftBlock(tokens, confidences, torch.stack(probs), self.source)
                for item, tokens, probs, confidences in zip(self.items, self.tokens, self.probs, self.confidences)
                if tokens}


class HeadDrafter(Drafter):
    """Drafts with a trained EAGLE-3, DFlash or DSpark head.

    Confidences: DSpark's confidence head (built from the block state and
    the previous draft); for EAGLE-3 and DFlash the largest probability of
    the head's untransformed distribution at that position, never the
    probability of the drawn token (speculation.md §4). Either is then
    scaled per position by the checkpoint's STS temperatures, if calibrated.
    """

    num_lookahead_slots = 0  # the head keeps its own state; no target KV slots

    def __init__(self, head: DraftHead):
        if head.shared is None:
            raise ValueError("HeadDrafter needs a head attached to its target (attach_target)")
        self.head = head.eval()
        self.aux_layers = tuple(head.config.aux_layers)
        self.block_size = head.config.block_size
        self.temperatures = head.config.calibration
        self.states: dict[str, RequestState] = {}
        self.pending_hidden: dict[str, list[torch.Tensor]] = {}  # absorbed, not yet folded in
        self.dtype = head.norm.weight.dtype
        self.name = head.config.method
        self.max_draft_tokens = head.config.block_size

    @classmethod
    def from_checkpoint(cls, path: str, target_model, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "HeadDrafter":
        return cls(load_head(path, target_model, dtype, device))

    def absorb(self, request, hidden: torch.Tensor | None) -> None:
        """Keep the new features; they are folded into the request's state
        when it next drafts (one pass over all new positions)."""
        if hidden is None:
            raise RuntimeError(f"request {request.request_id}: {self.name} drafting needs target features")
        self.pending_hidden.setdefault(request.request_id, []).append(hidden)

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.states.pop(rid, None)
            self.pending_hidden.pop(rid, None)

    @torch.inference_mode()
    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        items = [item for item in inputs if item.max_tokens > 0]
        if not items:
            return {}
        states = [self._absorb_checked(item) for item in items]
        batch = _Batch(items, states, self.name)
        if isinstance(self.head, Eagle3Head):
            self._draft_eagle3(batch)
        else:
            self._draft_block(batch)
        return batch.proposals()

    # ---- context -------------------------------------------------------------
    def _absorb_checked(self, item: DraftInput) -> RequestState:
        """Fold the request's new target features into its state."""
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
            new = new.to(self.dtype)
            if isinstance(self.head, Eagle3Head):
                self._absorb_eagle3(state, request, new)
            else:
                self._absorb_block(state, new)
        return state

    def _absorb_block(self, state: RequestState, feats: torch.Tensor) -> None:
        """feats [n, A*H]: projected context keys/values, one pass per layer."""
        positions = torch.arange(state.num_context, state.num_context + feats.shape[0],
                                 device=feats.device)[None]
        ctx = self.head.context(feats)
        kv = self.head.context_kv(ctx[None], positions)
        state.last_context = ctx[-1]
        if state.kv is None:
            state.kv = [GrowingKV(k[0]) for k, _ in kv]
        for cache, (k, v) in zip(state.kv, kv):
            cache.append(k[0], v[0])
        state.num_context += feats.shape[0]

    def _absorb_eagle3(self, state: RequestState, request, feats: torch.Tensor) -> None:
        """Run the head over new context entries (feats_i, token_{i+1}) with
        causal attention over its cached entries; keep the last output."""
        start, n = state.num_context, feats.shape[0]
        tokens = torch.tensor(request.token_ids(start + 1, start + n + 1), device=feats.device)
        positions = torch.arange(start, start + n, device=feats.device)
        hidden_in = self.head.fuse(feats)
        past_k, past_v = state.kv[0].view() if state.kv else _empty_kv(self.head, feats)
        mask = _causal_after_past(past_k.shape[0], n, feats.device)
        out, k, v = self.head.step(hidden_in[None], tokens[None], positions[None],
                                   past_k[None], past_v[None], mask[None])
        if state.kv is None:
            state.kv = [GrowingKV(k[0])]
        state.kv[0].append(k[0], v[0])
        state.last_out = out[0, -1]
        state.num_context += n

    # ---- drafting --------------------------------------------------------------
    def _draft_block(self, batch: _Batch) -> None:
        """DFlash / DSpark: the whole block in one backbone pass."""
        head: BlockHead = self.head
        ctx_kv, ctx_valid = _padded_context(batch.states, len(head.layers))
        lengths = torch.tensor([s.num_context for s in batch.states], device=ctx_valid.device)
        anchors = torch.tensor([[i.request.last_token_id] for i in batch.items], device=ctx_valid.device)
        width = head.block_inputs
        positions = lengths[:, None] + torch.arange(width, device=lengths.device)
        mask = torch.cat([ctx_valid[:, None, :].expand(-1, width, -1),
                          ctx_valid.new_ones(batch.size, width, width)], dim=2)
        last_context = torch.stack([s.last_context for s in batch.states])[:, None]  # [R, 1, H]
        hidden = head.block_forward(head.block_embeddings(anchors, last_context), positions, ctx_kv, mask)
        hidden = hidden[:, head.prediction_rows][:, : batch.longest]  # [R, k, H]
        base = head.logits(hidden)  # [R, k, V]
        prev = anchors[:, 0]
        for k in range(hidden.shape[1]):
            logits, confidence = base[:, k], None
            if isinstance(head, DSparkHead):
                logits = logits + head.markov_bias(prev)
                confidence = torch.sigmoid(head.confidence_logit(hidden[:, k], prev))
            prev = self._sample_position(batch, k, logits, confidence)

    def _draft_eagle3(self, batch: _Batch) -> None:
        """EAGLE-3: one head step per draft, each attending to the cached
        context plus this call's own (temporary) draft entries."""
        head: Eagle3Head = self.head
        layers, valid = _padded_context(batch.states, 1)
        past_k, past_v = layers[0]
        lengths = torch.tensor([s.num_context for s in batch.states], device=past_k.device)
        out = torch.stack([s.last_out for s in batch.states])  # [R, H]
        prev = self._sample_position(batch, 0, head.logits(out), None)
        for k in range(1, batch.longest):
            position = (lengths - 1 + k)[:, None]
            valid = torch.cat([valid, valid.new_ones(batch.size, 1)], dim=1)
            out, new_k, new_v = head.step(out[:, None], prev[:, None], position, past_k, past_v,
                                          valid[:, None, :])
            past_k, past_v = torch.cat([past_k, new_k], 1), torch.cat([past_v, new_v], 1)
            out = out[:, 0]
            prev = self._sample_position(batch, k, head.logits(out), None)

    def _sample_position(self, batch: _Batch, k: int, logits: torch.Tensor,
                         confidence: torch.Tensor | None) -> torch.Tensor:
        """Sample draft k for every request from its transformed distribution.

        logits [R, V] float32; confidence [R] from a confidence head, or
        None to use the raw probability of the drafted token. Returns the
        drafted tokens [R] long.
        """
        probs = target_probs(logits, batch.row_contexts())
        raw = torch.softmax(logits, dim=-1)
        tokens = []
        for i, item in enumerate(batch.items):
            if item.request.sampling_params.greedy:
                token = int(torch.argmax(probs[i]))
            else:
                token = int(torch.multinomial(probs[i], 1, generator=item.generator))
            c = float(raw[i].max()) if confidence is None else float(confidence[i])
            batch.add(i, token, probs[i], self._calibrated(c, k))
            tokens.append(token)
        return torch.tensor(tokens, device=logits.device)

    def _calibrated(self, confidence: float, k: int) -> float:
        """Sequential Temperature Scaling: sigmoid(logit(c) / T_k)."""
        if not self.temperatures:
            return confidence
        return scale_confidence(confidence, self.temperatures[k])


def scale_confidence(confidence: float, temperature: float) -> float:
    """sigmoid(logit(c) / T), with c clipped away from 0 and 1."""
    c = min(max(confidence, 1e-6), 1 - 1e-6)
    return 1.0 / (1.0 + math.exp(-math.log(c / (1 - c)) / temperature))


def _empty_kv(head: DraftHead, like: torch.Tensor):
    shape = (0, head.config.num_kv_heads, head.config.head_dim)
    return like.new_empty(shape), like.new_empty(shape)


def _causal_after_past(num_past: int, n: int, device) -> torch.Tensor:
    """[n, num_past + n]: new entry j sees every past entry and new entries <= j."""
    new = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return torch.cat([torch.ones(n, num_past, dtype=torch.bool, device=device), new], dim=1)


def _padded_context(states: list[RequestState], num_layers: int):
    """Per layer (k, v) [R, Cmax, kvh, hd] padded with zeros, and valid [R, Cmax] bool."""
    lengths = [s.num_context for s in states]
    longest = max(lengths)
    like = states[0].kv[0].keys
    valid = torch.zeros(len(states), longest, dtype=torch.bool, device=like.device)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    layers = []
    for layer in range(num_layers):
        k = like.new_zeros((len(states), longest, *like.shape[1:]))
        v = torch.zeros_like(k)
        for i, state in enumerate(states):
            k_i, v_i = state.kv[layer].view()
            k[i, : k_i.shape[0]], v[i, : v_i.shape[0]] = k_i, v_i
        layers.append((k, v))
    return layers, valid


def _build_head_drafter(context: DrafterContext) -> Drafter:
    """A trained head; its checkpoint must be of the method asked for."""
    config = context.config
    method, path = config.speculative.method, config.speculative.draft_model
    drafter = HeadDrafter.from_checkpoint(path, context.target.model, context.dtype, config.device)
    if drafter.name != method:
        raise ValueError(f"{path} holds a {drafter.name} head, not {method}")
    return drafter


for _method in METHODS:
    register_drafter(_method, needs_draft_model=True,
                     help=f"a trained {_method} head (--draft-model CHECKPOINT_DIR)")(_build_head_drafter)
