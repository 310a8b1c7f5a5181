"""Hybrid drafting: n-gram and a trained head for the same requests, the
more promising proposal chosen per request and step.

Copying (code edits, quoting the prompt) is where prompt lookup wins with
long accepted runs; free text is where a head wins. Per request and step
the hybrid compares the expected number of accepted drafts of the two
proposals and hands the scheduler the winner's block, with calibrated
confidences, as one set: `DraftBlock.source` names the drafter chosen.

Losslessness (speculation.md s.4): the choice must not depend on the
values the head draws. A rule reading the head's second confidence (which
depends on its first draft) or its drafted tokens would pick the head's
block more often when its first draft came out one way than another, and
bias sampled output exactly like a confidence that reads x_k. So the
choice uses only what is known before the head draws:
- the n-gram block (deterministic: a function of the context) and its
  calibrated confidences;
- the head's FIRST confidence (from the context alone: peak probability
  or DSpark's confidence head at the anchor), calibrated;
- the head's historical acceptance per draft position (past steps).
Expected accepted drafts: n-gram sum_j prod_{i<=j} c_i; head
c_1 * (1 + sum_{j>=2} prod_{2<=i<=j} s_i) with s_i the head's historical
conditional acceptance at position i. Ties go to n-gram (it costs no
compute). When n-gram's expectation beats what the head could reach even
with c_1 = 1, the head is not run at all for that request.

Load and cost: the head costs compute whether or not its drafts are
verified; n-gram drafts for free. The head is not run for a request, and
n-gram's block stands alone, when (`DraftInput.economics`, the verify
policy's terms at the current load):
- its historical first-position acceptance is below the survival the
  policy requires of a first draft (a busy machine on a batch-sensitive
  device raises it), or
- what a head run has brought, drafts gained per run (moving average:
  those its chosen blocks got accepted beyond the expectation of the
  n-gram blocks they displaced, `HeadPayoff`; beside the corpus datastore
  n-gram nearly always has a block on offer, and crediting the head with
  all its accepted drafts kept it running where it brought a few
  hundredths of a token more), times the seconds an accepted token is
  worth at this load (the policy's figure, a decode step over the users
  it delays, times the share of a step one more token saves the request:
  1 over the tokens it emits per step, so half a step where n-gram
  already brings two tokens a step), is less than
  what a run has cost: its measured seconds per request (less the folding
  of features that piled up while it was skipped) plus the step time
  its verified drafts added (verified drafts per run times what one more
  verified token costs at this load). A busy machine makes a token
  worth less (more users wait for each second of drafting); a machine where
  the head's forward is dear next to a decode step never lets it pay.
The payoff is kept apart per band of what n-gram's block on offer is
expected to get (`PAYOFF_BUCKET_EDGES`; no block: 0): beside a strong
n-gram block a head run is rarely chosen and gains a few hundredths of a
draft, beside a weak one or none it is chosen and gains most of what it
gets accepted. One figure over all steps averages the two, so it can
skip the head beside weak blocks where it pays and run it beside strong
ones where it does not. The band is read off n-gram's block, a function
of the context: pre-draw.
Exploration: once in EXPLORE_EVERY steps that skipped the head, it runs
anyway for ONE of the skipped requests, so the figures follow a change.
Each exploration that leaves the head skipped doubles that wait (up to
EXPLORE_EVERY_MAX steps); a step where the head pays for a request resets
it. Where the head never pays (this CPU's one stream beside the corpus
datastore: a run costs about a fifth of a step for a quarter of an
accepted draft) the hybrid then costs what n-gram does, give or take its
feature bookkeeping.
Counted in steps, not in requests x steps: at 32 streams the latter
explored every other step, and each explored run folds the whole backlog
of a request the head never ran for (its prompt and all it generated):
the hybrid ran 5% below n-gram at 32 streams for that alone. Of the
skipped requests it explores the one with the fewest features to fold.
History, timing, load and feature backlogs only: pre-draw information.

Length: the head drafts at most one more draft than the most the policy
verified of its recent blocks (`HeadLengths`), the policy's own "one more
than last time" for drafters that cost compute. Each draft past the
backbone is a sequential Markov step, an LM-head row and a sampling pass;
at one stream on this CPU the policy verifies about 1.2 of a block's 7.

Confidences are recalibrated online per source for the choice
(scheduler.calibration's per-position, per-bin map, from realised
acceptance read off the request's counters at the next absorb): n-gram's
raw confidences are a prior fitted offline on other text, and the head's
STS fit may drift in serving. A chosen head block is handed to the policy
with its mapped confidences and flagged calibrated, so the adaptive policy
reads them as they are rather than mapping them a second time; a chosen
n-gram or datastore block is handed over raw, for the policy's own map,
exactly as plain n-gram's blocks are (`_as_handed`).
"""
from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, replace

from engine.spec.base import DraftInput, Drafter
from engine.spec.head_payoff import (PAYOFF_BUCKET_EDGES, HeadLengths, HeadPayoff, PositionRates, head_expectation,
                                     ngram_expectation)
from engine.spec.head_drafter import HeadDrafter
from engine.spec.ngram import NgramDrafter, load_datastore
from engine.spec.registry import DrafterContext, register_drafter
from scheduler.calibration import ConfidenceCalibrator
from scheduler.drafts import DraftBlock, expected_accepted


EXPLORE_EVERY = 64  # steps that skipped the head; then it runs for one skipped request
EXPLORE_EVERY_MAX = 1024  # the wait after explorations that left the head skipped (doubling)
# Positions a head that drafts every step folds in per request and run: the
# tokens its last verification emitted (1 + accepted; about 2 with a head
# that pays).
STEADY_FOLD_POSITIONS = 2


@dataclass
class _Pending:
    """What was proposed for a request, until its verification is seen."""

    source: str
    raw: list[float]
    calibrated: list[float]
    counters: tuple[int, int, int]  # the request's (spec steps, drafts verified, accepted) at proposal
    displaced: float = 0.0  # a head block: the expected accepted drafts of the n-gram block it beat
    bucket: int = 0  # a head block: the payoff band of the n-gram block on offer


class HybridDrafter(Drafter):
    """n-gram and head proposals per request; the one with the larger
    expected accepted length, judged before the head draws (module doc)."""

    name = "hybrid"
    # Its head's cost is weighed per request and step (draft economics);
    # the policy's backoff and draft length would starve free n-gram too.
    costs_compute = False
    num_lookahead_slots = 0

    def __init__(self, head: HeadDrafter, ngram: NgramDrafter,
                 payoff_edges: tuple[float, ...] = PAYOFF_BUCKET_EDGES):
        self.head, self.ngram = head, ngram
        self.aux_layers = head.aux_layers
        # n-gram drafts up to --num-speculative-tokens (a copied run can go on
        # past the head's block); the head drafts at most its block.
        self.max_draft_tokens = None
        self.head_source = head.name
        self.calibrators = {source: ConfidenceCalibrator() for source in (*ngram.sources, head.name)}
        self.head_rates = PositionRates()
        self.pending: dict[str, _Pending] = {}
        self.choices = {source: 0 for source in (*ngram.sources, head.name)}  # proposals handed out per source
        self.payoff_edges = payoff_edges
        self.payoffs = [HeadPayoff() for _ in range(len(payoff_edges) + 1)]  # per band (module doc)
        # An accepted draft is worth its request's share of a step
        # (DraftInput.steps_saved_per_token); False: a whole step, as
        # before phase 24 (tools.engine_ab's hybrid-ds-one-payoff).
        self.value_share_of_step = True
        self.head_lengths = HeadLengths()
        # Requests x steps the head did not run for, by reason (its first draft
        # would not be verified at the load; its runs have not paid), and the
        # skips overruled to keep the payoff figures current.
        self.head_skipped = {"threshold": 0, "cost": 0}
        self.explored = 0
        self._steps_since_explore = 0
        self._explore_every = EXPLORE_EVERY

    # ---- the Drafter interface ----
    def absorb(self, request, hidden) -> None:
        self._observe_verification(request)
        self.head.absorb(request, hidden)
        self.ngram.absorb(request)

    def forget(self, request_ids: list[str]) -> None:
        self.head.forget(request_ids)
        self.ngram.forget(request_ids)
        for rid in request_ids:
            self.pending.pop(rid, None)
            for calibrator in self.calibrators.values():
                calibrator.forget(rid)

    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        items = [item for item in inputs if item.max_tokens > 0]
        raw: dict[tuple[str, str], list[float]] = {}
        drafted = self.ngram.propose(items)  # as plain n-gram hands them to the policy
        ngram = self._calibrated(drafted, raw)
        # Expected accepted drafts of n-gram's block on offer per request (0: none).
        offered = {item.request.request_id: ngram_expectation(ngram.get(item.request.request_id)) for item in items}
        need_head = self._heads_to_run(items, offered)
        head = self._calibrated(self._run_head(need_head, offered), raw) if need_head else {}
        proposals = {}
        for item in items:
            rid = item.request.request_id
            ngram_block = ngram.get(rid)
            chosen = choose(ngram_block, head.get(rid), self.head_rates, item.max_tokens)
            if chosen is not None:
                displaced = 0.0 if chosen is ngram_block else offered[rid]
                self._remember(item.request, chosen, raw[rid, chosen.source], displaced, self._bucket(offered[rid]))
                proposals[rid] = self._as_handed(chosen, drafted.get(rid))
        return proposals

    def _bucket(self, offered: float) -> int:
        """The payoff band of an n-gram block expected to get `offered`."""
        return bisect_right(self.payoff_edges, offered)

    def _as_handed(self, block: DraftBlock, drafted: DraftBlock | None) -> DraftBlock:
        """The block the verify policy gets. A head block goes as the head's
        calibrator mapped it, flagged. For an n-gram or datastore block it is
        `drafted`, n-gram's block as drafted (raw confidences, unflagged):
        the policy maps it with its own calibrator, as it maps plain
        n-gram's, so where the head does not pay the hybrid verifies what
        n-gram + datastore would. Handed over
        with the per-source maps, it verified 4-10% more drafts than n-gram
        + datastore on chat under load, level in time either way
        (docs/draft-heads.md, phase 15)."""
        return block if block.source == self.head_source else drafted

    def _run_head(self, items: list[DraftInput], offered: dict[str, float]) -> dict[str, DraftBlock]:
        items = [replace(item, max_tokens=self._head_length(item)) for item in items]
        started = time.perf_counter()
        blocks = self.head.propose(items)
        elapsed = time.perf_counter() - started
        seconds_per_run = max(0.0, elapsed - self._catch_up_seconds(len(items))) / len(items)
        runs = Counter(self._bucket(offered[item.request.request_id]) for item in items)
        for bucket, num_runs in runs.items():
            self.payoffs[bucket].record_runs(num_runs, seconds_per_run * num_runs)
        return blocks

    def _catch_up_seconds(self, num_runs: int) -> float:
        """The part of the last head run spent folding features that piled up
        while the head was skipped. A head that drafts every step folds
        about STEADY_FOLD_POSITIONS per request and run; charging a run that
        comes after a long skip for the whole backlog would make the head
        look dearer the longer it was skipped, and keep it skipped."""
        fold_seconds, folded = self.head.last_fold
        steady = num_runs * STEADY_FOLD_POSITIONS
        return fold_seconds * (folded - steady) / folded if folded > steady else 0.0

    # ---- choice and calibration ----
    def _heads_to_run(self, items: list[DraftInput], offered: dict[str, float]) -> list[DraftInput]:
        """The requests the head runs for: those whose proposal could beat
        n-gram's where running it pays at this load, and now and then one
        skipped request to explore (module doc). Pre-draw information only."""
        run, skipped = [], []
        for item in items:
            rid = item.request.request_id
            if not self._head_could_win(item, offered[rid]):
                continue
            reason = self._skip_reason(item, self.payoffs[self._bucket(offered[rid])])
            if reason is None:
                run.append(item)
            else:
                skipped.append((item, reason))
        if run:  # the head pays for someone at this load: explore at the first pace again
            self._explore_every = EXPLORE_EVERY
        explore = self._exploring(skipped)
        for item, reason in skipped:
            if item is explore:
                run.append(item)
            else:
                self.head_skipped[reason] += 1
        return run

    def _head_could_win(self, item: DraftInput, offered: float) -> bool:
        """Whether the head's proposal could beat n-gram's block (expected to
        get `offered`) even with c_1 = 1."""
        return head_expectation(1.0, self.head_rates, self._head_length(item)) > offered

    def _head_length(self, item: DraftInput) -> int:
        return self.head_lengths.cap(min(item.max_tokens, self.head.max_draft_tokens or item.max_tokens))

    def _skip_reason(self, item: DraftInput, payoff: HeadPayoff) -> str | None:
        """Why running the head for a request does not pay at this load
        (`payoff`: its band's, beside the n-gram block on offer), or None."""
        if self.head_rates.rate(0) < item.economics.first_draft_threshold:
            return "threshold"
        if not payoff.pays(item.economics, item.steps_saved_per_token if self.value_share_of_step else 1.0):
            return "cost"
        return None

    def _exploring(self, skipped: list[tuple[DraftInput, str]]) -> DraftInput | None:
        """Once in `_explore_every` steps with skips, the skipped request
        whose run folds the fewest features; else None. Each exploration
        doubles the wait until the head pays again (module doc)."""
        if not skipped:
            return None
        self._steps_since_explore += 1
        if self._steps_since_explore < self._explore_every:
            return None
        self._steps_since_explore = 0
        self._explore_every = min(EXPLORE_EVERY_MAX, 2 * self._explore_every)
        self.explored += 1
        return min((item for item, _ in skipped), key=lambda item: self.head.backlog(item.request))

    def _calibrated(self, blocks: dict[str, DraftBlock], raw: dict) -> dict[str, DraftBlock]:
        """Blocks with confidences mapped by their source's online calibrator;
        the raw ones go to `raw[rid, source]` (observed after verification)."""
        out = {}
        for rid, block in blocks.items():
            raw[rid, block.source] = list(block.confidences)
            calibrated = self.calibrators[block.source].calibrate(rid, block.confidences)
            out[rid] = DraftBlock(block.token_ids, calibrated, block.probs, block.source, calibrated=True,
                                  peaks=block.peaks)
        return out

    def _remember(self, request, block: DraftBlock, raw: list[float], displaced: float, bucket: int) -> None:
        counters = (request.num_spec_steps, request.num_draft_tokens, request.num_accepted_tokens)
        self.pending[request.request_id] = _Pending(block.source, raw, block.confidences, counters, displaced,
                                                    bucket)
        self.choices[block.source] += 1

    def _observe_verification(self, request) -> None:
        """If the last proposal for `request` was verified since, record how
        it fared (the scheduler's counters say how many drafts it verified
        and how many were accepted)."""
        pending = self.pending.get(request.request_id)
        if pending is None:
            return
        steps, verified, accepted = (now - then for now, then in zip(
            (request.num_spec_steps, request.num_draft_tokens, request.num_accepted_tokens), pending.counters))
        if steps == 0:
            return  # not verified yet (a step that did not verify it, e.g. a prefill chunk)
        del self.pending[request.request_id]
        if pending.source == self.head_source:
            self.head_lengths.observe(verified)
        if verified == 0:
            return
        self.calibrators[pending.source].observe(request.request_id, pending.raw[:verified],
                                                 pending.calibrated[:verified], accepted)
        if pending.source == self.head_source:
            self.head_rates.observe(verified, accepted)
            self.payoffs[pending.bucket].record_outcome(verified, accepted, pending.displaced)

    def events(self) -> dict[str, int]:
        """Head runs skipped per request and step (where the head could have
        won), by reason, and skips overruled to explore."""
        return {f"head_skipped_{reason}": count for reason, count in self.head_skipped.items()} | \
            {"head_explored": self.explored}

    def stats(self) -> dict:
        return {"chosen": dict(self.choices), "head_skipped": dict(self.head_skipped), "explored": self.explored,
                "explore_every": self._explore_every,
                "payoff_edges": list(self.payoff_edges),  # the bands of the per-band figures below
                "head_runs": [round(payoff.runs, 1) for payoff in self.payoffs],
                "head_gained_per_run": [round(payoff.gained_per_run, 3) for payoff in self.payoffs],
                "head_seconds_per_run": [round(payoff.seconds_per_run, 5) for payoff in self.payoffs],
                "head_verified_per_run": [round(payoff.verified_per_run, 3) for payoff in self.payoffs],
                "head_length_cap": self.head_lengths.cap(self.head.max_draft_tokens or 0),
                "head_position_rates": [round(self.head_rates.rate(i), 3)
                                                                      for i in range(len(self.head_rates.trials))]}


def choose(ngram: DraftBlock | None, head: DraftBlock | None, rates: PositionRates,
           max_tokens: int) -> DraftBlock | None:
    """The block to verify: the larger expected accepted length; reads of
    the head's block only its FIRST confidence (module doc)."""
    if head is None or not head.token_ids:
        return ngram
    if ngram is None:
        return head
    head_score = head_expectation(head.confidences[0], rates, min(max_tokens, len(head.token_ids)))
    return head if head_score > expected_accepted(ngram.confidences) else ngram


@register_drafter("hybrid", needs_draft_model=True,
                  help="n-gram and a trained head (--draft-model CHECKPOINT_DIR), the more promising "
                       "proposal per request and step")
def _build_hybrid(context: DrafterContext) -> Drafter:
    config = context.config
    spec = config.speculative
    head = HeadDrafter.from_checkpoint(spec.draft_model, context.target.model, context.dtype, config.device)
    datastore = load_datastore(spec.ngram_datastore, context.target.tokenizer)
    return HybridDrafter(head, NgramDrafter(spec.ngram_min, spec.ngram_max, datastore=datastore))
