"""Continuous batching over a per-step token budget, with chunked prefill,
prefix caching, draft verification and preemption by recomputation.

One token-count rule, no prefill/decode split: a request's gap is
`num_tokens - num_computed_tokens`, the real tokens that still need KV. Each
step closes as much of every gap as the budget allows; a request in decode
has a gap of 1 (its last sampled token) and may add drafts to verify.
"""
from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from scheduler.block_manager import BlockManager
from scheduler.drafting import DraftingLimits, draft_room
from scheduler.drafts import NO_DRAFTS, DraftBlock, DraftEconomics
from scheduler.load import KvTally
from scheduler.output import DraftSlot, RunnerOutput, ScheduledRequest, SchedulerOutput
from scheduler.plan import StepPlan, TokenBudget
from scheduler.policies import VerifyAllPolicy, VerifyPolicy
from scheduler.request import Request, RequestStatus
from scheduler.step_load import CounterSource, StepLoad

StopCheck = Callable[[Request, int], "RequestStatus | None"]


class SchedulerLimits(Protocol):
    """What the scheduler reads from engine.config.SchedulerConfig."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


class CacheGeometry(Protocol):
    """What the scheduler reads from engine.config.CacheConfig."""

    block_size: int
    num_blocks: int


class Scheduler:
    """Decides, each step, which requests run and how many tokens each adds.

    Running requests are served first, oldest first; waiting requests join
    in FIFO order while the token budget, `max_num_seqs` and free KV blocks
    allow. When blocks run out, the most recently arrived running request is
    preempted (its KV dropped, recomputed later) and goes back to the front
    of the queue. Lookahead slots are optional: given up before anyone is
    preempted, so a request's table may lack them (whoever drafts must check).
    Drafts come last, within the budget and KV room nobody else needs, as
    the policy chooses against the step's LoadSignal (scheduler.step_load;
    `device_counters()` gives the latest reading of a background sampler).

    A waiting request that could never fit (too long for max_model_len or
    for the whole cache, e.g. after growing while it was preempted) is
    finished by `schedule()` itself: its status says so and its id is in that
    output's `freed_request_ids`.
    """

    def __init__(self, scheduler_config: SchedulerLimits, cache_config: CacheGeometry,
                 drafting: DraftingLimits | None = None, verify_policy: VerifyPolicy | None = None,
                 enable_prefix_caching: bool = True, device_counters: CounterSource | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = scheduler_config
        self.block_manager = BlockManager(cache_config.num_blocks, cache_config.block_size,
                                          enable_prefix_caching)
        self.drafting = drafting
        self.verify_policy = verify_policy or VerifyAllPolicy()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # kept in arrival order
        self.num_preemptions = 0
        # Prompt tokens looked up in the prefix cache on admission, and found.
        self.num_prefix_cache_queries = 0
        self.num_prefix_cache_hits = 0
        self._live: dict[str, Request] = {}
        self._arrival: dict[str, int] = {}
        self._arrival_counter = itertools.count()
        self._freed_ids: list[str] = []
        self.load = StepLoad(self.block_manager, device_counters, clock)

    # ---- requests in and out ------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self._live:
            raise ValueError(f"request {request.request_id!r} is already scheduled")
        request.status = RequestStatus.WAITING
        self._live[request.request_id] = request
        self._arrival[request.request_id] = next(self._arrival_counter)
        self.waiting.append(request)
        self.load.arrived(request)

    def abort_request(self, request_id: str) -> bool:
        """Finish a live request as aborted and free its blocks now."""
        request = self._live.get(request_id)
        if request is None:
            return False
        if request.status is not RequestStatus.RUNNING:
            self.waiting.remove(request)
        self._finish(request, RequestStatus.FINISHED_ABORTED)
        return True

    def has_unfinished(self) -> bool:
        return bool(self._live)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.block_manager.usage

    @property
    def num_lookahead_slots(self) -> int:
        return self.drafting.num_lookahead_slots if self.drafting else 0

    # ---- schedule -----------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Running requests' real tokens first, then admissions, then drafts:
        drafts take only the budget and KV blocks nobody else needs."""
        budget = TokenBudget(self.config.max_num_batched_tokens)
        preemptions_before = self.num_preemptions
        plans = self._schedule_running(budget)
        preempted = self.num_preemptions != preemptions_before
        head_refused = False
        # Admitting right after a preemption would only take back the blocks
        # just freed for the running requests, and thrash.
        if not preempted:
            admitted, head_refused = self._schedule_waiting(budget)
            plans += admitted
        self._plan_drafts(plans, budget, kv_back_off=preempted or head_refused)
        self.load.account(plans)
        freed, self._freed_ids = self._freed_ids, []
        return SchedulerOutput(scheduled=[self._scheduled(p) for p in plans], freed_request_ids=freed)

    def _schedule_running(self, budget: TokenBudget) -> list[StepPlan]:
        allocated = []
        for plan in self._plan_running(budget):
            # An earlier plan may have preempted this request to get blocks.
            if plan.request.status is RequestStatus.RUNNING and self._allocate_running(plan):
                allocated.append(plan)
        return allocated

    def _plan_running(self, budget: TokenBudget) -> list[StepPlan]:
        plans = []
        for request in self.running:
            num_query = budget.take(request.num_tokens - request.num_computed_tokens)
            if num_query:
                plans.append(self._new_plan(request, num_query))
        return plans

    def _plan_drafts(self, plans: list[StepPlan], budget: TokenBudget, kv_back_off: bool) -> None:
        candidates = [plan for plan in plans if plan.can_verify]
        load = self.load.signal(plans, candidates, self.running, self.waiting, kv_back_off)
        num_emitting = sum(1 for plan in plans if plan.samples)
        self.verify_policy.observe_load(budget.left, num_emitting, load)
        if not candidates:
            return
        lengths = self.verify_policy.choose_lengths([p.request for p in candidates], budget.left,
                                                    num_emitting=num_emitting, load=load)
        tally = KvTally(load.kv)
        for plan in candidates:
            rid = plan.request.request_id
            wanted = min(plan.draft_cap(lengths.get(rid, 0), self.config.max_model_len), budget.left)
            self._grant_drafts(plan, tally.take_prefix(rid, wanted), budget)

    def _grant_drafts(self, plan: StepPlan, num_drafts: int, budget: TokenBudget) -> None:
        if not num_drafts:
            return
        plan.num_spec_tokens = budget.take(num_drafts)
        plan.num_alternative_rows = budget.take(plan.request.drafts.prefix(plan.num_spec_tokens).num_alternative_rows)
        block_ids = self.block_manager.allocate_slots(plan.request.request_id, plan.num_slots)
        if block_ids is None:  # the KV room said it fits: a bookkeeping bug
            raise AssertionError(f"{plan.request.request_id}: drafts inside the KV room found no blocks")
        plan.block_ids = block_ids

    def _new_plan(self, request: Request, num_query_tokens: int) -> StepPlan:
        plan = StepPlan(request, num_query_tokens)
        if plan.samples:
            plan.num_lookahead_slots = self.num_lookahead_slots
        return plan

    def _allocate_running(self, plan: StepPlan) -> bool:
        while not self._allocate(plan):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is plan.request:
                return False
        return True

    def _allocate(self, plan: StepPlan) -> bool:
        """Blocks for the plan, shrinking its optional part until they fit."""
        while True:
            block_ids = self.block_manager.allocate_slots(plan.request.request_id, plan.num_slots)
            if block_ids is not None:
                plan.block_ids = block_ids
                return True
            if not plan.drop_optional_slots():
                return False

    @staticmethod
    def _scheduled(plan: StepPlan) -> ScheduledRequest:
        return ScheduledRequest(request=plan.request,
                                start_position=plan.request.num_computed_tokens,
                                num_query_tokens=plan.num_query_tokens,
                                block_ids=plan.block_ids, drafts=plan.drafts,
                                num_cached_prefix=plan.num_cached_prefix)

    def _preempt(self, request: Request) -> None:
        self._remove_running(request)
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = 0
        request.drafts = NO_DRAFTS
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        self._freed_ids.append(request.request_id)

    def _schedule_waiting(self, budget: TokenBudget) -> tuple[list[StepPlan], bool]:
        """Admit in FIFO order; also whether the head was refused for lack of KV blocks."""
        admitted = []
        while self.waiting and budget.left and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if not self._can_ever_fit(request):
                self._finish_never_fitting(self.waiting.popleft())
                continue
            plan = self._admit(request, budget)
            if plan is None:
                return admitted, True
            admitted.append(plan)
        return admitted, False

    def _can_ever_fit(self, request: Request) -> bool:
        """False when even an empty cache could not hold the request's next step."""
        if request.num_tokens >= self.config.max_model_len:
            return False
        needed = self.block_manager.num_blocks_for(request.num_tokens)
        return needed <= self.block_manager.num_blocks

    def _admit(self, request: Request, budget: TokenBudget) -> StepPlan | None:
        request_id = request.request_id
        request.num_computed_tokens = self.block_manager.match_prefix(
            request_id, request.all_token_ids)
        plan = self._new_plan(request, min(request.num_tokens - request.num_computed_tokens,
                                           budget.left))
        plan.num_cached_prefix = request.num_computed_tokens
        if not self._allocate(plan):
            self.block_manager.free(request_id)
            request.num_computed_tokens = 0
            return None
        budget.take(plan.num_query_tokens)
        self.num_prefix_cache_queries += request.num_tokens
        self.num_prefix_cache_hits += plan.num_cached_prefix
        self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        bisect.insort(self.running, request, key=self._arrival_of)
        return plan

    def _arrival_of(self, request: Request) -> int:
        return self._arrival[request.request_id]

    def _finish_never_fitting(self, request: Request) -> None:
        # A request that already produced text ran out of room: that is a
        # length limit, as max_model_len would be.
        too_long = RequestStatus.FINISHED_LENGTH if request.output_token_ids else None
        self._finish(request, too_long or RequestStatus.FINISHED_ABORTED)

    # ---- update -------------------------------------------------------------

    def update_from_output(self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput,
                           check_stop: StopCheck) -> list[tuple[Request, list[int]]]:
        """Apply one step's results; return (request, new token ids) per request
        that got tokens or finished (aborts by the caller excepted)."""
        results = []
        for item in scheduler_output.scheduled:
            # Aborted between schedule() and now: its blocks are gone already.
            if item.request.is_finished:
                continue
            new_token_ids = self._update_request(item, runner_output, check_stop)
            if new_token_ids or item.request.is_finished:
                results.append((item.request, new_token_ids))
        return results

    def _update_request(self, item: ScheduledRequest, runner_output: RunnerOutput,
                        check_stop: StopCheck) -> list[int]:
        samples = item.samples  # read before tokens are appended
        item.request.num_computed_tokens += item.num_new_tokens
        new_token_ids = self._accept(item, runner_output, check_stop) if samples else []
        self._cache_new_full_blocks(item)
        if item.request.is_finished:
            self._finish(item.request)
        elif samples:
            self._prepare_next_step(item.request)
        return new_token_ids

    def _accept(self, item: ScheduledRequest, runner_output: RunnerOutput,
                check_stop: StopCheck) -> list[int]:
        request = item.request
        sampled = runner_output.sampled_token_ids.get(request.request_id, [])
        num_accepted = _num_accepted(item, sampled, runner_output)
        # KV was written for every verified draft; only accepted ones count.
        request.num_computed_tokens -= item.num_spec_tokens - num_accepted
        if item.num_spec_tokens:
            request.num_spec_steps += 1
            request.num_draft_tokens += item.num_spec_tokens
            request.num_accepted_tokens += num_accepted
            # The policy calibrates the block's own confidences: an alternative
            # branch's win is not theirs.
            own = runner_output.block_accepted.get(request.request_id, num_accepted)
            self.verify_policy.observe(request.request_id, item.num_spec_tokens, own)
        return self._append_tokens(request, sampled, check_stop)

    def _append_tokens(self, request: Request, sampled: list[int],
                       check_stop: StopCheck) -> list[int]:
        appended = []
        for token_id in sampled:
            request.append_output_token(token_id)
            appended.append(token_id)
            status = check_stop(request, token_id) or self._length_limit(request)
            if status is not None:
                # Later tokens of this step are dropped, as plain decoding
                # would never have produced them.
                request.status = status
                break
        return appended

    def _length_limit(self, request: Request) -> RequestStatus | None:
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _cache_new_full_blocks(self, item: ScheduledRequest) -> None:
        request = item.request
        block_size = self.block_manager.block_size
        # After a stop cut, KV may exist for tokens no longer in the sequence.
        num_computed = min(request.num_computed_tokens, request.num_tokens)
        # Blocks before start_position were registered in earlier steps.
        if num_computed // block_size > item.start_position // block_size:
            self.block_manager.cache_computed_blocks(
                request.request_id, request.all_token_ids, num_computed)

    def _prepare_next_step(self, request: Request) -> None:
        # Release blocks of rejected drafts; keep what the next step needs
        # anyway, including the draft model's lookahead KV. The verified
        # drafts are spent; new ones come through install_drafts().
        self.block_manager.trim(request.request_id, request.num_tokens + self.num_lookahead_slots)
        request.drafts = NO_DRAFTS

    # ---- drafting -----------------------------------------------------------

    def draft_slots(self, requests: list[Request]) -> list[DraftSlot]:
        """Which of `requests` (running, just sampled) draft for the next step,
        how many drafts each may propose, with lookahead KV reserved."""
        if self.drafting is None:
            return []
        economics = self.verify_policy.draft_economics()
        slots = [self._draft_slot(r, economics) for r in requests if not r.is_finished]
        return [slot for slot in slots if slot is not None]

    def _draft_slot(self, request: Request, economics: DraftEconomics) -> DraftSlot | None:
        room = draft_room(request, self.drafting, self.verify_policy, self.config.max_model_len)
        if room <= 0:
            return None
        block_ids = self.block_manager.allocate_slots(
            request.request_id, request.num_tokens + self.num_lookahead_slots)
        if block_ids is None:
            return None  # no KV room to draft into: decode plainly this step
        return DraftSlot(request, room, block_ids, economics)

    def install_drafts(self, drafts: dict[str, DraftBlock]) -> None:
        """Drafts proposed for live requests; verified (a prefix) next step."""
        for request_id, block in drafts.items():
            request = self._live.get(request_id)
            if request is not None and not request.is_finished:
                request.drafts = block

    def observe_step_time(self, num_tokens: int, seconds: float) -> None:
        """A whole engine step's wall time, for the policy's live step cost."""
        self.verify_policy.observe_step(num_tokens, seconds)

    # ---- shared helpers -----------------------------------------------------

    def _finish(self, request: Request, status: RequestStatus | None = None) -> None:
        if status is not None:
            request.status = status
        request.drafts = NO_DRAFTS
        self.verify_policy.forget(request.request_id)
        self._remove_running(request)
        self.block_manager.free(request.request_id)
        del self._live[request.request_id]
        del self._arrival[request.request_id]
        self._freed_ids.append(request.request_id)

    def _remove_running(self, request: Request) -> None:
        self.running = [r for r in self.running if r is not request]


def _num_accepted(item: ScheduledRequest, sampled: list[int], runner_output: RunnerOutput) -> int:
    """Accepted drafts of this step, checked against the runner's contract."""
    request_id = item.request.request_id
    num_accepted = len(sampled) - 1
    reported = runner_output.num_accepted.get(request_id, num_accepted)
    if not 0 <= num_accepted <= item.num_spec_tokens or reported != num_accepted:
        raise ValueError(
            f"runner emitted {len(sampled)} tokens for {request_id!r} with "
            f"{item.num_spec_tokens} drafts and num_accepted={reported}")
    return num_accepted
