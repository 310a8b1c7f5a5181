"""Offline evaluation of a draft head: accepted length tau, ECE, AUROC.

tau = mean tokens emitted per verification step, bonus included, at a
fixed block size with the scheduler off (every draft is verified).

Two ways to get it, both through the real HeadDrafter:
- `teacher_forced_simulation`: walks cached held-out sequences. Exact for
  greedy decoding when the sequences are the target's own greedy output:
  the target's choice at every position is then the next token, so a draft
  is accepted iff it matches it, and the emitted stream is the sequence
  itself. Needs no target forward (cheap enough to run during training).
- `speculative_decode`: real decoding, any temperature: one packed target
  forward per step over [anchor, drafts] for every request, acceptance by
  engine/spec/rejection.py against the target's distributions under the
  request's sampling transforms, the drafter fed the hidden states of
  accepted tokens only (what the engine's runner does).
Both return the per-step confidence records that calibrate.py scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.kv_cache import allocate_kv_caches
from engine.sampler import RowContext, make_generator, target_probs
from engine.spec.base import DraftInput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads import DraftHead
from engine.spec.rejection import rejection_sample
from engine.spec.training.calibrate import BlockRecord, calibration_report
from engine.spec.training.features import FeatureSet
from kernels.attention import AttentionMetadata
from scheduler.request import Request, SamplingParams

KV_BLOCK = 16


@dataclass
class SpecResult:
    """Outcome of an evaluation run."""

    num_steps: int = 0  # verification steps that had drafts
    num_emitted: int = 0  # tokens emitted by those steps (accepted + recovered/bonus)
    records: list[BlockRecord] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return self.num_emitted / self.num_steps if self.num_steps else float("nan")

    def record(self, confidences: list[float], num_accepted: int, emitted: int) -> None:
        self.num_steps += 1
        self.num_emitted += emitted
        self.records.append(BlockRecord(list(confidences), num_accepted))
        while len(self.accepted_per_position) < len(confidences):
            self.accepted_per_position.append(0)
        for k in range(num_accepted):
            self.accepted_per_position[k] += 1

    def merge(self, other: "SpecResult") -> None:
        self.num_steps += other.num_steps
        self.num_emitted += other.num_emitted
        self.records.extend(other.records)
        for k, n in enumerate(other.accepted_per_position):
            if k >= len(self.accepted_per_position):
                self.accepted_per_position.append(0)
            self.accepted_per_position[k] += n

    def summary(self, block_size: int, temperatures: list[float] | None = None) -> dict:
        return {"tau": self.tau, "steps": self.num_steps, "emitted": self.num_emitted,
                "accepted_per_position": self.accepted_per_position,
                **calibration_report(self.records, block_size, temperatures)}


def raw_drafter(head: DraftHead) -> HeadDrafter:
    """A drafter reporting uncalibrated confidences (what calibration fits)."""
    drafter = HeadDrafter(head)
    drafter.temperatures = None
    return drafter


# ---------------------------------------------------------------- teacher-forced (greedy)

class _Walk:
    """One cached sequence being decoded along its own tokens."""

    def __init__(self, rid: str, tokens: torch.Tensor, aux: torch.Tensor, prompt_len: int):
        self.rid, self.tokens, self.aux = rid, tokens.tolist(), aux
        self.prompt_len = max(1, prompt_len)
        self.pos = self.prompt_len  # index of the anchor; features known for [0, pos)
        self.fed = 0  # features already handed to the drafter

    @property
    def done(self) -> bool:
        return self.pos >= len(self.tokens) - 1

    def draft_input(self, block_size: int, params: SamplingParams) -> DraftInput:
        request = Request(self.rid, self.tokens[: self.prompt_len], params)
        request.output_token_ids = self.tokens[self.prompt_len: self.pos + 1]
        request.num_computed_tokens = self.pos
        hidden = self.aux[self.fed: self.pos].float()
        self.fed = self.pos
        return DraftInput(request, self.room(block_size), torch.Generator().manual_seed(0), hidden)

    def room(self, block_size: int) -> int:
        """Drafts allowed now. Like the engine, keep one token for the
        bonus: the sequence is treated as ending at max_tokens."""
        return min(block_size, len(self.tokens) - 2 - self.pos)

    def verify(self, drafts: list[int]) -> int:
        """Greedy acceptance against the sequence; advance; return accepted count."""
        truth = self.tokens[self.pos + 1: self.pos + 1 + len(drafts)]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == truth[accepted]:
            accepted += 1
        self.pos += accepted + 1
        return accepted


@torch.no_grad()
def teacher_forced_simulation(head: DraftHead, features: FeatureSet, block_size: int | None = None,
                              batch: int = 16) -> SpecResult:
    """Greedy speculative decoding along cached sequences (see module doc)."""
    block_size = block_size or head.config.block_size
    features = features.select_layers(head.config.aux_layers)
    was_training = head.training
    head.eval()
    result, params = SpecResult(), SamplingParams(temperature=0.0, max_tokens=1 << 20)
    for start in range(0, len(features), batch):
        walks = [_Walk(f"seq{i}", features.tokens[i], features.aux[i], features.prompt_lens[i])
                 for i in range(start, min(start + batch, len(features)))]
        _simulate(raw_drafter(head), walks, block_size, params, result)
    head.train(was_training)
    return result


def _simulate(drafter: HeadDrafter, walks: list[_Walk], block_size: int, params, result: SpecResult) -> None:
    active = [w for w in walks if not w.done]
    while active:
        inputs = [w.draft_input(block_size, params) for w in active if w.room(block_size) > 0]
        proposals = drafter.propose(inputs, {})
        for walk in active:
            proposal = proposals.get(walk.rid)
            drafts = proposal.token_ids if proposal else []
            accepted = walk.verify(drafts)
            if drafts:
                result.record(proposal.confidences, accepted, accepted + 1)
        active = [w for w in active if not w.done]
    drafter.free([w.rid for w in walks])


# ---------------------------------------------------------------- real decoding

class _Decoding:
    """One request in the evaluation decoder: its KV blocks, drafts and the
    features of tokens that got KV but have not reached the drafter yet."""

    def __init__(self, rid: str, prompt: list[int], params: SamplingParams, blocks: list[int], seed: int):
        self.request = Request(rid, list(prompt), params)
        self.blocks = blocks
        self.target_generator = make_generator(seed)
        self.draft_generator = make_generator(seed + 7919)
        self.drafts: list[int] = []
        self.draft_probs: torch.Tensor | None = None
        self.confidences: list[float] = []
        self.pending: list[torch.Tensor] = []
        self.finished = False

    def query(self) -> list[int]:
        r = self.request
        return r.all_token_ids[r.num_computed_tokens:] + self.drafts


@torch.no_grad()
def speculative_decode(loaded, head: DraftHead, prompts: list[list[int]], params: SamplingParams,
                       block_size: int | None = None, seed: int = 0, stop_token_ids=()) -> SpecResult:
    """Decode `prompts` with the head drafting and the target verifying all
    of `block_size` drafts per step; returns tau and the confidence records."""
    decoder = _Decoder(loaded, raw_drafter(head), block_size or head.config.block_size, set(stop_token_ids))
    requests = decoder.admit(prompts, params, seed)
    while active := [r for r in requests if not r.finished]:
        decoder.verify(active)
        decoder.draft([r for r in active if not r.finished])
    decoder.drafter.free([r.request.request_id for r in requests])
    return decoder.result


class _Decoder:
    """A minimal speculative decoding loop (no scheduler): all requests run
    together, each verifies every draft it has."""

    def __init__(self, loaded, drafter: HeadDrafter, block_size: int, stops: set[int]):
        self.model, self.config = loaded.model, loaded.config
        self.drafter, self.block_size, self.stops = drafter, block_size, stops
        self.dtype = next(loaded.model.parameters()).dtype
        self.result = SpecResult()
        self.caches = None

    def admit(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> list[_Decoding]:
        """Give each prompt its own contiguous KV blocks (room for the output and a block of drafts)."""
        sizes = [(len(p) + params.max_tokens + self.block_size + KV_BLOCK) // KV_BLOCK + 1 for p in prompts]
        self.caches = allocate_kv_caches(self.config, sum(sizes), KV_BLOCK, self.dtype, "cpu")
        requests, first = [], 0
        for i, (prompt, size) in enumerate(zip(prompts, sizes)):
            requests.append(_Decoding(f"eval{i}", prompt, params, list(range(first, first + size)), seed + i))
            first += size
        return requests

    def verify(self, active: list[_Decoding]) -> None:
        """One packed target forward over every request's new tokens and drafts."""
        queries = [r.query() for r in active]
        starts = [r.request.num_computed_tokens for r in active]
        lengths = [len(q) for q in queries]
        meta = AttentionMetadata.build(lengths, [s + n for s, n in zip(starts, lengths)],
                                       [r.blocks for r in active], KV_BLOCK, "cpu")
        ids = torch.tensor([t for q in queries for t in q])
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths)])
        final, aux = self.model(ids, positions, self.caches, meta, aux_layers=self.drafter.aux_layers)
        features = torch.cat(aux, dim=-1)
        rows = self._sample_rows(active, lengths)
        probs = target_probs(self.model.compute_logits(final[rows]), self._row_contexts(active))
        drafts = torch.tensor([t for r in active for t in r.drafts], dtype=torch.long)
        draft_probs = torch.cat([r.draft_probs for r in active if r.drafts]) if drafts.numel() else None
        outcome = rejection_sample(drafts, draft_probs, probs, [len(r.drafts) for r in active],
                                   [r.target_generator for r in active])
        offsets = [0] + torch.tensor(lengths).cumsum(0).tolist()
        for r, emitted, accepted, offset in zip(active, outcome.emitted_token_ids, outcome.num_accepted, offsets):
            kept = len(r.query()) - len(r.drafts) + accepted  # real tokens + accepted drafts got KV
            r.pending.append(features[offset: offset + kept])
            if r.drafts:
                self.result.record(r.confidences, accepted, accepted + 1)
            self._append(r, emitted, kept)

    @staticmethod
    def _sample_rows(active: list[_Decoding], lengths: list[int]) -> list[int]:
        """Packed rows of each request's last real token and its drafts."""
        rows, offset = [], 0
        for r, n in zip(active, lengths):
            first = offset + n - len(r.drafts) - 1
            rows.extend(range(first, first + len(r.drafts) + 1))
            offset += n
        return rows

    @staticmethod
    def _row_contexts(active: list[_Decoding]) -> list[RowContext]:
        """Row j of a request sees its output plus drafts 1..j (as the runner does)."""
        return [RowContext(r.request.sampling_params, r.request.prompt_token_ids,
                           r.request.output_token_ids + r.drafts[:j])
                for r in active for j in range(len(r.drafts) + 1)]

    def _append(self, r: _Decoding, emitted: list[int], kept: int) -> None:
        """Advance the request: emitted tokens, up to max_tokens or a stop token."""
        request = r.request
        request.num_computed_tokens += kept
        for token in emitted:
            request.append_output_token(token)
            if token in self.stops or request.num_output_tokens >= request.sampling_params.max_tokens:
                r.finished = True
                break
        r.drafts, r.draft_probs, r.confidences = [], None, []

    def draft(self, active: list[_Decoding]) -> None:
        """Drafts for the next step; features reach the drafter only here."""
        inputs = []
        for r in active:
            request = r.request
            room = min(self.block_size, request.sampling_params.max_tokens - request.num_output_tokens - 1)
            if room <= 0:
                continue
            hidden = torch.cat(r.pending)
            r.pending = []
            inputs.append(DraftInput(request, room, r.draft_generator, hidden))
        proposals = self.drafter.propose(inputs, {}) if inputs else {}
        for r in active:
            proposal = proposals.get(r.request.request_id)
            if proposal is not None:
                r.drafts, r.draft_probs, r.confidences = proposal.token_ids, proposal.probs, proposal.confidences
