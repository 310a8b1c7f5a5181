"""What a HeadDrafter keeps per request, and the batch a head drafts into.

Every draft is sampled from `probs[k]`, the head's distribution after the
request's own sampling transforms (engine.sampler.target_probs with the
drafts before it counted as output), so rejection sampling stays exact.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.sampler import RowContext, target_probs
from engine.spec.base import DraftInput
from engine.spec.draw import draw_drafts, grammar_mask, walk_grammar
from engine.spec.heads.config import calibration_for, position_map
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
        # The family's summary of the last absorbed position [H]: EAGLE-3's
        # output there, a block head's context vector.
        self.last: torch.Tensor | None = None

    def append_kv(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per head layer (k, v), each [n, kvh, hd]."""
        if self.kv is None:
            self.kv = [GrowingKV(k) for k, _ in layers]
        for cache, (k, v) in zip(self.kv, layers):
            cache.append(k, v)


def padded_context(states: list[RequestState], num_layers: int):
    """Per layer (k, v) [R, Cmax, kvh, hd] padded with zeros, and valid [R, Cmax] bool."""
    like = states[0].kv[0].keys
    if len(states) == 1:  # one request (a single stream): its caches as they are, no padded copy
        valid = torch.ones(1, states[0].num_context, dtype=torch.bool, device=like.device)
        return [tuple(t[None] for t in cache.view()) for cache in states[0].kv[:num_layers]], valid
    lengths = [s.num_context for s in states]
    longest = max(lengths)
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


class CompactLogits(NamedTuple):
    """A head's logits over its draft vocabulary: [R, Vd] float32, with
    `ids` [Vd] their target ids. The distribution they stand for is the
    target-vocabulary one with -inf off the draft vocabulary (`expand`)."""

    logits: torch.Tensor
    ids: torch.Tensor
    vocab_size: int

    def expand(self) -> torch.Tensor:
        """[..., V]: the logits at their target ids, -inf elsewhere."""
        full = self.logits.new_full((*self.logits.shape[:-1], self.vocab_size), float("-inf"))
        full[..., self.ids] = self.logits
        return full

    def first_argmax(self) -> torch.Tensor:
        """[R] target ids: the argmax of `expand()` (on ties the smallest
        target id, as argmax over the full vocabulary breaks them) without
        building it."""
        top = self.logits.amax(dim=-1, keepdim=True)
        tied = torch.where(self.logits == top, self.ids, self.vocab_size)
        return tied.amin(dim=-1)


class DraftBatch:
    """Drafts being built for the requests of one propose() call.

    Confidences: a confidence head's output where the family has one, else
    the largest probability of the head's untransformed distribution at
    that position (never the drawn token's probability: speculation.md §4);
    either is then mapped per position by the calibration entries fitted
    for the request's sampling temperature (`calibration`, a
    HeadConfig.calibration value), if given; an entry may also read that
    peak, which every block carries (`DraftBlock.peaks`) so that such a
    map can be fitted on the engine's records.
    """

    def __init__(self, items: list[DraftInput], states: list[RequestState],
                 calibration: dict[str, list] | list | None = None, source: str = ""):
        self.items, self.states = items, states
        self.calibrations = [calibration_for(calibration, _sampling_temperature(item)) for item in items]
        self.source = source
        self.tokens: list[list[int]] = [[] for _ in items]
        self.probs: list[list[torch.Tensor]] = [[] for _ in items]
        self.confidences: list[list[float]] = [[] for _ in items]
        self.peaks: list[list[float]] = [[] for _ in items]

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def longest(self) -> int:
        return max(item.max_tokens for item in self.items)

    def row_contexts(self) -> list[RowContext]:
        """Sampling context of each request's next draft position."""
        return [RowContext.for_request(item.request, drafted, grammar_mask(item))
                for item, drafted in zip(self.items, self.tokens)]

    def sample(self, k: int, logits: torch.Tensor | CompactLogits,
               confidence: torch.Tensor | None) -> torch.Tensor:
        """Sample draft k for every request from its transformed distribution.

        logits [R, V] float32, or a head's CompactLogits; confidence [R]
        from a confidence head, or None to use the peak of the head's raw
        distribution. Returns the drafted tokens [R] long.
        """
        compact = logits.logits if isinstance(logits, CompactLogits) else logits
        # -inf off a draft vocabulary adds nothing to the softmax: the compact peak is the full one.
        peaks = torch.softmax(compact, dim=-1).amax(dim=-1).tolist()
        confidence = peaks if confidence is None else confidence.tolist()
        if isinstance(logits, CompactLogits) and all(_plain_greedy(item) for item in self.items):
            # What target_probs and draw_drafts give these rows (the one-hot of
            # the full argmax), without three passes over the target's vocabulary.
            drawn = logits.first_argmax()
            probs = compact.new_zeros((len(self.items), logits.vocab_size)).scatter_(1, drawn[:, None], 1.0)
        else:
            full = logits.expand() if isinstance(logits, CompactLogits) else logits
            probs = target_probs(full, self.row_contexts())
            drawn = draw_drafts(probs, self.items, [len(drafted) for drafted in self.tokens])
        for i, token in enumerate(drawn.tolist()):
            self._add(i, token, probs[i], self._calibrated(confidence[i], peaks[i], i, k), peaks[i])
        return drawn

    def _add(self, index: int, token: int, probs: torch.Tensor, confidence: float, peak: float) -> None:
        if len(self.tokens[index]) < self.items[index].max_tokens:
            walk_grammar(self.items[index], token)
            self.tokens[index].append(token)
            self.probs[index].append(probs)
            self.confidences[index].append(confidence)
            self.peaks[index].append(peak)

    def _calibrated(self, confidence: float, peak: float, row: int, k: int) -> float:
        """The position's calibration map (STS: sigmoid(logit(c) / T_k + b_k))."""
        entries = self.calibrations[row]
        if not entries:
            return confidence
        return scale_confidence(confidence, entries[k], peak)

    def proposals(self) -> dict[str, DraftBlock]:
        return {item.request.request_id: DraftBlock(tokens, confidences, torch.stack(probs), self.source,
                                                    peaks=peaks)
                for item, tokens, probs, confidences, peaks in zip(self.items, self.tokens, self.probs,
                                                                   self.confidences, self.peaks)
                if tokens}


def _plain_greedy(item: DraftInput) -> bool:
    """Greedy with no transform before the argmax (penalty, logit_bias, grammar)."""
    params = item.request.sampling_params
    return params.greedy and not params.has_penalties and not params.logit_bias and item.grammar is None


def _sampling_temperature(item: DraftInput) -> float:
    params = item.request.sampling_params
    return 0.0 if params.greedy else params.temperature


def scale_confidence(confidence: float, entry, peak: float | None = None) -> float:
    """A calibration entry applied to a confidence (config.position_map):
    sigmoid(logit(c) / T + shift), or with a peak map also + w logit(peak);
    probabilities clipped away from 0 and 1. An entry that reads the peak
    fails without one rather than silently dropping its term."""
    weights = position_map(entry)
    z = weights.confidence * _logit(confidence) + weights.bias
    if weights.peak:
        if peak is None:
            raise ValueError(f"calibration entry {entry!r} reads the draft distribution's peak; none given")
        z += weights.peak * _logit(peak)
    return 1.0 / (1.0 + math.exp(-z))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))
