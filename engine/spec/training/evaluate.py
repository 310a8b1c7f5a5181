"""Offline evaluation of a draft head: accepted length tau, ECE, AUROC.

tau = mean tokens emitted per verification step, bonus included, at a
fixed block size with the scheduler off (every draft is verified).

Two ways to get it, both through the real HeadDrafter:
- `teacher_forced_simulation`: walks cached held-out sequences. Exact for
  greedy decoding when the sequences are the target's own greedy output:
  the target's choice at every position is then the next token, so a draft
  is accepted iff it matches it, and the emitted stream is the sequence
  itself. Needs no target forward (cheap enough to run during training).
- `speculative_decode`: real decoding, any temperature, through the
  server's own engine (LLMEngine: scheduler, runner step, rejection
  sampling, hidden states of accepted tokens to the drafter) with the
  static policy at the block size; the records come from the engine's
  per-request speculation counters, so the offline figure is the server's.
Both return the per-step confidence records that calibrate.py scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from engine.config import CacheConfig, SchedulerConfig, SpeculativeConfig
from engine.spec.base import DraftInput, Drafter
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.base import DraftHead
from engine.spec.hybrid import HybridDrafter
from engine.spec.ngram import NgramDrafter
from engine.spec.training.calibrate import BlockRecord, calibration_report
from engine.spec.training.features import FeatureSet
from engine.spec.training.generate import engine_for
from scheduler.drafts import NO_DRAFTS, DraftBlock
from scheduler.request import Request, SamplingParams

KV_BLOCK = 16


@dataclass
class SpecResult:
    """Outcome of an evaluation run."""

    num_steps: int = 0  # verification steps that had drafts
    num_emitted: int = 0  # tokens emitted by those steps (accepted + recovered/bonus)
    num_plain_steps: int = 0  # decode steps without drafts (one token each; n-gram found no match)
    records: list[BlockRecord] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    # Where each record came from: (request number, engine step) from real
    # decoding, for a replay of what an online calibrator saw in order;
    # (sequence number, anchor position) from a teacher-forced walk.
    origins: list[tuple[int, int]] = field(default_factory=list)
    num_engine_steps: int = 0

    @property
    def tau(self) -> float:
        return self.num_emitted / self.num_steps if self.num_steps else float("nan")

    @property
    def tokens_per_step(self) -> float:
        """Tokens per decode step, plain steps included: what a drafter that
        sometimes proposes nothing (n-gram, hybrid) buys per target forward."""
        steps = self.num_steps + self.num_plain_steps
        return (self.num_emitted + self.num_plain_steps) / steps if steps else float("nan")

    def record(self, confidences: list[float], num_accepted: int, emitted: int,
               peaks: list[float] | None = None, origin: tuple[int, int] | None = None) -> None:
        self.num_steps += 1
        if origin is not None:
            self.origins.append(origin)
        self.num_emitted += emitted
        self.records.append(BlockRecord(list(confidences), num_accepted, None if peaks is None else list(peaks)))
        while len(self.accepted_per_position) < len(confidences):
            self.accepted_per_position.append(0)
        for k in range(num_accepted):
            self.accepted_per_position[k] += 1

    def record_plain_step(self) -> None:
        """A decode step that verified nothing: one token, as plain decoding."""
        self.num_plain_steps += 1

    def merge(self, other: "SpecResult") -> None:
        self.num_plain_steps += other.num_plain_steps
        self.num_steps += other.num_steps
        self.num_emitted += other.num_emitted
        self.records.extend(other.records)
        # The other run's steps come after this one's.
        self.origins.extend((request, step + self.num_engine_steps) for request, step in other.origins)
        self.num_engine_steps += other.num_engine_steps
        for k, n in enumerate(other.accepted_per_position):
            if k >= len(self.accepted_per_position):
                self.accepted_per_position.append(0)
            self.accepted_per_position[k] += n

    def summary(self, block_size: int, calibration: list | None = None) -> dict:
        return {"tau": self.tau, "steps": self.num_steps, "emitted": self.num_emitted,
                "plain_steps": self.num_plain_steps, "tokens_per_step": self.tokens_per_step,
                "accepted_per_position": self.accepted_per_position,
                **calibration_report(self.records, block_size, calibration)}


EVAL_DRAFTERS = ("head", "hybrid", "ngram")


def evaluation_drafter(head: DraftHead, kind: str) -> Drafter:
    """What eval-draft measures: the head alone with raw confidences (what
    STS is fitted to), n-gram alone, or the hybrid of both as served (the
    head's STS calibration in place, n-gram at its serving defaults)."""
    if kind == "head":
        return raw_drafter(head)
    if kind == "ngram":
        return NgramDrafter()
    if kind == "hybrid":
        return HybridDrafter(HeadDrafter(head), NgramDrafter())
    raise ValueError(f"unknown drafter {kind!r}; choose from {', '.join(EVAL_DRAFTERS)}")


def raw_drafter(head: DraftHead) -> HeadDrafter:
    """A drafter reporting uncalibrated confidences (what calibration fits)."""
    drafter = HeadDrafter(head)
    drafter.calibration = None
    return drafter


# ---------------------------------------------------------------- teacher-forced (greedy)

class _Walk:
    """One cached sequence being decoded along its own tokens."""

    def __init__(self, rid: str, tokens: torch.Tensor, aux: torch.Tensor, prompt_len: int, number: int):
        self.rid, self.tokens, self.aux, self.number = rid, tokens.tolist(), aux, number
        self.prompt_len = max(1, prompt_len)
        self.pos = self.prompt_len  # index of the anchor; features known for [0, pos)
        self.fed = 0  # features already handed to the drafter

    @property
    def done(self) -> bool:
        return self.pos >= len(self.tokens) - 1

    def draft_input(self, drafter: Drafter, block_size: int, params: SamplingParams) -> DraftInput:
        """The request as the engine would show it, after `drafter` absorbed
        the features of the tokens confirmed since last time."""
        request = Request(self.rid, self.tokens[: self.prompt_len], params)
        request.output_token_ids = self.tokens[self.prompt_len: self.pos + 1]
        request.num_computed_tokens = self.pos
        drafter.absorb(request, self.aux[self.fed: self.pos].float())
        self.fed = self.pos
        return DraftInput(request, self.room(block_size), torch.Generator().manual_seed(0), [])

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
    """Greedy speculative decoding along cached sequences (see module doc),
    from the first trained token to the end (the sequences must be the
    target's own greedy responses, one per sequence)."""
    block_size = block_size or head.config.block_size
    features = features.select_layers(head.config.aux_layers)
    was_training = head.training
    head.eval()
    result, params = SpecResult(), SamplingParams(temperature=0.0, max_tokens=1 << 20)
    for start in range(0, len(features), batch):
        sequences = [features.sequence(i) for i in range(start, min(start + batch, len(features)))]
        walks = [_Walk(f"seq{i}", seq.tokens, seq.aux, seq.first_trainable, start + i)
                 for i, seq in enumerate(sequences)]
        _simulate(raw_drafter(head), walks, block_size, params, result)
    head.train(was_training)
    return result


def _simulate(drafter: HeadDrafter, walks: list[_Walk], block_size: int, params, result: SpecResult) -> None:
    active = [w for w in walks if not w.done]
    while active:
        inputs = [w.draft_input(drafter, block_size, params) for w in active if w.room(block_size) > 0]
        proposals = drafter.propose(inputs)
        for walk in active:
            proposal = proposals.get(walk.rid)
            drafts = proposal.token_ids if proposal else []
            anchor = walk.pos
            accepted = walk.verify(drafts)
            if drafts:
                result.record(proposal.confidences, accepted, accepted + 1, proposal.peaks, (walk.number, anchor))
        active = [w for w in active if not w.done]
    drafter.forget([w.rid for w in walks])


# ---------------------------------------------------------------- real decoding (the server's step)

class _RecordingDrafter(Drafter):
    """Passes proposals through and keeps them (confidences, peaks) until
    the engine step that verifies them (the next one) has run."""

    def __init__(self, inner: Drafter):
        self.inner = inner
        for name in ("name", "aux_layers", "num_lookahead_slots", "costs_compute", "max_draft_tokens"):
            setattr(self, name, getattr(inner, name))
        self.proposed: dict[str, DraftBlock] = {}

    def absorb(self, request, hidden) -> None:
        self.inner.absorb(request, hidden)

    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        proposals = self.inner.propose(inputs)
        self.proposed.update(proposals)
        return proposals

    def forget(self, request_ids: list[str]) -> None:
        self.inner.forget(request_ids)

    def take(self) -> dict[str, DraftBlock]:
        """The blocks the next engine step will verify."""
        proposed, self.proposed = self.proposed, {}
        return proposed


@torch.no_grad()
def speculative_decode(loaded, head: DraftHead, prompts: list[list[int]], params: SamplingParams,
                       block_size: int | None = None, seed: int = 0, drafter: str = "head",
                       first_request: int = 0) -> SpecResult:
    """Decode `prompts` through LLMEngine, the head drafting and every one of
    `block_size` drafts verified per step (static policy): tau and the
    confidence records of what the server does. Request i samples with
    seed `seed + i` (its drafts with the engine's draft seed from it) and
    stops where the server would (max_tokens, stop tokens, EOS). `drafter`
    picks what drafts (`evaluation_drafter`); decode steps in which it
    proposed nothing count in `tokens_per_step`, not in tau. Each record's
    origin is (first_request + i, the engine step that verified it)."""
    block_size = block_size or head.config.block_size
    drafter = _RecordingDrafter(evaluation_drafter(head, drafter))
    engine = _evaluation_engine(loaded, drafter, prompts, params.max_tokens, block_size)
    numbers = {f"eval{i}": first_request + i for i in range(len(prompts))}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"eval{i}", prompt, replace(params, seed=seed + i))
    result, counts = SpecResult(), {}
    while engine.has_unfinished():
        verified = drafter.take()
        for output in engine.step():
            _record_verification(result, output, verified, counts, numbers)
        result.num_engine_steps += 1
    return result


def _evaluation_engine(loaded, drafter: Drafter, prompts: list[list[int]], max_tokens: int,
                       block_size: int):
    """An engine with room for every request at once (no preemption, no
    chunked prefill, no draft cut by the token budget) that verifies every
    draft: static policy at `block_size`."""
    per_request = [len(p) + max_tokens + block_size + 1 for p in prompts]
    scheduler = SchedulerConfig(max_num_seqs=len(prompts), max_model_len=max(per_request),
                                max_num_batched_tokens=sum(len(p) + block_size + 1 for p in prompts))
    cache = CacheConfig(block_size=KV_BLOCK, num_blocks=sum(n // KV_BLOCK + 2 for n in per_request))
    # The in-memory head (which may not be saved anywhere) is handed to the
    # engine directly, so the config names no method.
    speculative = SpeculativeConfig(method="none", num_speculative_tokens=block_size, policy="static")
    return engine_for(loaded, cache, scheduler, speculative, drafter=drafter)


def _record_verification(result: SpecResult, output, verified: dict[str, DraftBlock],
                         counts: dict[str, tuple[int, int, int]],
                         request_numbers: dict[str, int] | None = None) -> None:
    """Turn the engine's cumulative per-request speculation counters into
    this step's verification record (at most one per request per step)."""
    rid = output.request_id
    now = (output.num_spec_steps, output.num_draft_tokens, output.num_accepted_tokens)
    steps, drafted, accepted = (a - b for a, b in zip(now, counts.get(rid, (0, 0, 0))))
    seen = rid in counts
    counts[rid] = now
    if steps == 0:
        if seen and output.new_token_ids:  # a decode step without drafts (the first output is prefill's)
            result.record_plain_step()
        return
    block = verified.get(rid, NO_DRAFTS)
    if steps != 1 or len(block) < drafted:
        raise RuntimeError(f"request {rid}: {steps} verifications of {drafted} drafts in one step, "
                           f"{len(block)} drafts proposed")
    block = block.prefix(drafted)
    origin = None if request_numbers is None else (request_numbers[rid], result.num_engine_steps)
    result.record(block.confidences, accepted, accepted + 1, block.peaks, origin)
