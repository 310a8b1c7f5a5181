"""One step's load signal, built from the scheduler's own state (no torch).

The scheduler asks `StepLoad.signal` after it has planned the running
requests' real tokens and admitted what it could, and before any draft is
looked at; `account` records where the step's budget went.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from scheduler.block_manager import BlockManager
from scheduler.load import DeviceCounters, KvRoom, LoadSignal, LoadStats
from scheduler.plan import StepPlan
from scheduler.request import Request

CounterSource = Callable[[], "DeviceCounters | None"]
RECENT_ARRIVALS = 16  # the arrival rate is measured over this many arrivals
MIN_RATE_WINDOW_S = 1.0  # a burst counts as arriving over at least this long


class StepLoad:
    """Builds each step's LoadSignal and keeps the LoadStats for /metrics.

    `device_counters()` returns the latest machine reading (a background
    sampler's, never read in the step loop); `clock` is the clock of
    `Request.arrival_time`.
    """

    def __init__(self, block_manager: BlockManager, device_counters: CounterSource | None,
                 clock: Callable[[], float]):
        self.block_manager = block_manager
        self.device_counters = device_counters or (lambda: None)
        self.clock = clock
        self.stats = LoadStats()
        self._arrivals: deque[float] = deque(maxlen=RECENT_ARRIVALS)

    def arrived(self, request: Request) -> None:
        """A request joined the queue (a preempted one coming back is no arrival)."""
        self._arrivals.append(request.arrival_time)

    def arrival_rate(self, now: float) -> float:
        """Requests per second over the recent arrivals, up to now: a pause
        in arrivals lowers it at once."""
        if len(self._arrivals) < 2:
            return 0.0
        return (len(self._arrivals) - 1) / max(MIN_RATE_WINDOW_S, now - self._arrivals[0])

    def signal(self, plans: list[StepPlan], candidates: list[StepPlan], running: Sequence[Request],
               waiting: Sequence[Request], kv_back_off: bool) -> LoadSignal:
        """The load as it stands once real tokens and admissions are planned."""
        num_emitting = sum(1 for plan in plans if plan.samples)
        # Each running request's next real token may need a new block: the
        # drafts leave one per request, so they stop before anyone would
        # have to be preempted for them.
        spare = self.block_manager.num_free_blocks - len(running)
        pressure = kv_back_off or spare < 0
        now = self.clock()
        oldest = now - waiting[0].arrival_time if waiting else 0.0
        load = LoadSignal(num_stalled=len(running) + len(waiting) - num_emitting,
                          num_waiting=len(waiting), oldest_wait_s=max(0.0, oldest),
                          arrival_rate=self.arrival_rate(now),
                          num_prefill_tokens=sum(p.num_query_tokens for p in plans if not _in_decode(p)),
                          kv=KvRoom.none() if pressure else self._kv_room(candidates, spare),
                          kv_pressure=pressure, device=self.device_counters())
        self._record(load, max(0, spare), drafts_ready=bool(candidates))
        return load

    def _kv_room(self, candidates: list[StepPlan], spare_blocks: int) -> KvRoom:
        """Slots the candidates hold past their real tokens, and the spare blocks."""
        block_size = self.block_manager.block_size
        free_slots = {p.request.request_id: len(p.block_ids) * block_size - p.num_slots
                      for p in candidates}
        return KvRoom(block_size, spare_blocks, free_slots)

    def _record(self, load: LoadSignal, spare_blocks: int, drafts_ready: bool) -> None:
        stats = self.stats
        stats.num_stalled, stats.oldest_wait_s = load.num_stalled, load.oldest_wait_s
        stats.arrival_rate = load.arrival_rate
        stats.kv_spare_blocks, stats.kv_pressure = spare_blocks, load.kv_pressure
        stats.busy, stats.device = load.busy, load.device
        stats.kv_backoff_steps += load.kv_pressure and drafts_ready

    def account(self, plans: list[StepPlan]) -> None:
        """Budget given to prefill, to decoding and to drafts."""
        stats = self.stats
        for plan in plans:
            if _in_decode(plan):
                stats.decode_tokens += 1
            else:
                stats.prefill_tokens += plan.num_query_tokens
            stats.draft_tokens += plan.num_spec_tokens


def _in_decode(plan: StepPlan) -> bool:
    """Its one real token is the last one sampled (not a prompt or recomputed token)."""
    return plan.num_query_tokens == 1 and plan.samples and plan.request.num_output_tokens > 0
