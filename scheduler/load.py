"""Live load: the target's step-cost curve SPS(B), and the load signal the
scheduler hands the verification policy each step.

SPS(B) is forward steps per second when the packed batch holds B query
tokens. It is profiled once at start-up (cached per model, device and dtype
by the engine), kept monotone non-increasing in B, and refined online from
measured step times with an exponential moving average per batch-size bucket.

The load signal (`LoadSignal`) holds plain numbers the scheduler knows before
it looks at any draft of the step: users left without a token, the queue,
the KV room drafts may use, and the machine counters a background sampler
read (`DeviceCounters`). No torch here: the engine fills the counters.
"""
from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class StepCostModel:
    """Step time (seconds) against total query tokens B, at probe sizes.

    Between probes the time is interpolated linearly; beyond the last probe
    it is extrapolated with the last segment's slope.

    Online refinement separates two things: a global factor (the whole
    machine got slower, e.g. another process took a core: every B alike) and
    the shape of the curve (what the verification policy's decisions depend
    on, since Theta comparisons are scale-free). Each measured step moves the
    global factor, and the residual moves only the nearest probe size, so a
    burst of outside load measured at one B does not bend the shape.
    """

    sizes: list[int]
    seconds: list[float]
    ema: float = 0.1
    local_ema: float = 0.02
    observations: int = 0
    scale: float = 1.0
    _monotone: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.seconds):
            raise ValueError("need matching, non-empty sizes and seconds")
        if self.sizes != sorted(self.sizes) or len(set(self.sizes)) != len(self.sizes):
            raise ValueError("sizes must be strictly increasing")
        if any(s <= 0 for s in self.seconds):
            raise ValueError("step times must be positive")
        self._refresh()

    @classmethod
    def flat(cls, seconds: float = 0.01, max_tokens: int = 512) -> "StepCostModel":
        """Cost that does not grow with B (an idle accelerator)."""
        return cls([1, max_tokens], [seconds, seconds])

    @classmethod
    def linear(cls, base: float, per_token: float, max_tokens: int = 512) -> "StepCostModel":
        return cls([1, max_tokens], [base + per_token, base + per_token * max_tokens])

    def _refresh(self) -> None:
        # Step time must not fall as the batch grows (SPS non-increasing):
        # a running maximum from the left.
        out, high = [], 0.0
        for s in self.seconds:
            high = max(high, s * self.scale)
            out.append(high)
        self._monotone = out

    def step_seconds(self, num_tokens: int) -> float:
        sizes, secs = self.sizes, self._monotone
        b = max(1, num_tokens)
        if len(sizes) == 1 or b <= sizes[0]:
            return secs[0]
        hi = min(bisect.bisect_left(sizes, b), len(sizes) - 1)  # last segment extrapolates
        lo = hi - 1
        slope = (secs[hi] - secs[lo]) / (sizes[hi] - sizes[lo])
        return secs[lo] + slope * (b - sizes[lo])

    def sps(self, num_tokens: int) -> float:
        return 1.0 / self.step_seconds(num_tokens)

    def observe(self, num_tokens: int, seconds: float) -> None:
        """Blend one measured step into the global factor and the shape."""
        if seconds <= 0 or not math.isfinite(seconds):
            return
        ratio = seconds / self.step_seconds(num_tokens)
        self.scale *= (1 - self.ema) + self.ema * ratio
        self._refresh()
        residual = seconds / self.step_seconds(num_tokens)
        i = min(range(len(self.sizes)), key=lambda j: abs(math.log(self.sizes[j]) - math.log(max(1, num_tokens))))
        self.seconds[i] *= (1 - self.local_ema) + self.local_ema * residual
        self.observations += 1
        self._refresh()

    def saturated_seconds_per_token(self) -> float:
        """Seconds one more token costs where the machine is saturated: the
        slope of the curve's last segment (0 with a single probe size)."""
        if len(self.sizes) < 2:
            return 0.0
        secs, sizes = self._monotone, self.sizes
        return (secs[-1] - secs[-2]) / (sizes[-1] - sizes[-2])

    def table(self) -> list[tuple[int, float]]:
        """(B, SPS) at each probe size, as the scheduler currently sees it."""
        return [(b, 1.0 / s) for b, s in zip(self.sizes, self._monotone)]

    def to_json(self) -> str:
        return json.dumps({"sizes": self.sizes, "seconds": [s * self.scale for s in self.seconds]})

    @classmethod
    def from_json(cls, text: str) -> "StepCostModel":
        data = json.loads(text)
        return cls(list(data["sizes"]), list(data["seconds"]))


def probe_sizes(max_tokens: int) -> list[int]:
    """Batch sizes worth profiling: dense where drafts live, sparse above."""
    sizes = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
    return [s for s in sizes if s <= max_tokens] or [1]


# ---- the load signal --------------------------------------------------------


@dataclass(frozen=True)
class DeviceCounters:
    """One reading of the machine, taken off the step loop by a background
    sampler (engine/device_stats.py); None where a counter is unknown.

    `gpu_other_utilization`: share of time other processes' kernels ran on
    the GPU (NVML per-process samples). `cpu_wait_fraction`: share of this
    process's runnable time its threads spent waiting for a CPU that someone
    else held (Linux schedstat).
    """

    sampled_at: float = 0.0  # time.monotonic() of the reading
    gpu_utilization: float | None = None  # 0-1, every process together
    gpu_other_utilization: float | None = None  # 0-1
    gpu_memory_used: int | None = None
    gpu_memory_total: int | None = None
    sm_clock_mhz: float | None = None
    max_sm_clock_mhz: float | None = None
    cpu_wait_fraction: float | None = None  # 0-1

    @property
    def busy(self) -> float:
        """Share of the machine others hold (0-1); 0 where nothing says so."""
        shares = [v for v in (self.gpu_other_utilization, self.cpu_wait_fraction) if v is not None]
        return min(1.0, max([0.0, *shares]))


@dataclass(frozen=True)
class KvRoom:
    """Where this step's drafts may write KV without taking a block that
    anyone else needs.

    `free_slots[r]`: slots left in the blocks request r already holds after
    its real tokens (drafts there take no block). `spare_blocks`: new blocks
    all drafts together may take (None: no limit). Under KV pressure the
    scheduler passes `KvRoom.none()`, where no draft fits.
    """

    block_size: int = 1
    spare_blocks: int | None = None
    free_slots: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def none(cls) -> "KvRoom":
        return cls(spare_blocks=0)

    def new_blocks(self, request_id: str, length: int) -> int:
        """Blocks that verifying `length` drafts of the request adds."""
        over = length - self.free_slots.get(request_id, 0)
        return -(-over // self.block_size) if over > 0 else 0


class KvTally:
    """Blocks taken so far by the drafts admitted against a KvRoom."""

    def __init__(self, room: KvRoom):
        self.room = room
        self.used = 0

    def admit(self, request_id: str, length: int) -> bool:
        """Take what draft number `length` of the request needs (the ones
        before it were admitted); False, taking nothing, if it does not fit."""
        room = self.room
        extra = room.new_blocks(request_id, length) - room.new_blocks(request_id, length - 1)
        if room.spare_blocks is not None and self.used + extra > room.spare_blocks:
            return False
        self.used += extra
        return True

    def take_prefix(self, request_id: str, wanted: int) -> int:
        """The most drafts, up to `wanted`, that fit; their blocks are taken."""
        length = 0
        while length < wanted and self.admit(request_id, length + 1):
            length += 1
        return length


@dataclass(frozen=True)
class LoadSignal:
    """What the scheduler knows of the load when it asks the policy; all of
    it is fixed before any draft of the step is looked at.

    `num_stalled`: users present who get no token this step whatever is
    verified (queued, mid-prefill, or left out of the budget): each of them
    waits as long as the step lasts. `arrival_rate`: requests per second of
    late (those arriving during the step wait for its end too).
    `kv_pressure`: the cache is too full for any draft (`kv` is then
    `KvRoom.none()`).
    """

    num_stalled: int = 0
    num_waiting: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate: float = 0.0
    num_prefill_tokens: int = 0  # of this step's tokens, those not of requests in decode
    kv: KvRoom = field(default_factory=KvRoom)
    kv_pressure: bool = False
    device: DeviceCounters | None = None

    @property
    def busy(self) -> float:
        """Share of the machine others hold, from the device counters."""
        return self.device.busy if self.device is not None else 0.0


IDLE = LoadSignal()  # nobody waiting, no KV limit, nobody else on the machine


@dataclass(frozen=True)
class LoadedStepCost:
    """The step cost drafts are priced with: the live curve plus, on a
    machine others use, each token's saturated price times their share.

    Where the profile is flat, an extra token rides on capacity nobody uses;
    when others hold a share `busy` of the machine, that much of the
    capacity is not idle, so each token we add costs that share of what it
    costs on a saturated machine (the curve's last slope). With `busy` = 0
    this is the live curve itself.
    """

    cost: StepCostModel
    busy: float = 0.0
    _busy_per_token: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_busy_per_token", self.busy * self.cost.saturated_seconds_per_token())

    def step_seconds(self, num_tokens: int) -> float:
        return self.cost.step_seconds(num_tokens) + self._busy_per_token * max(1, num_tokens)

    def sps(self, num_tokens: int) -> float:
        return 1.0 / self.step_seconds(num_tokens)


@dataclass
class LoadStats:
    """Where the step budget went and the load the policy last saw (/metrics)."""

    prefill_tokens: int = 0  # prompt tokens, and tokens recomputed after a preemption
    decode_tokens: int = 0  # the last sampled token of requests in decode
    draft_tokens: int = 0  # drafts verified
    kv_backoff_steps: int = 0  # steps where drafts were ready but KV pressure verified none
    # The last step's signal.
    num_stalled: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate: float = 0.0
    kv_spare_blocks: int = 0
    kv_pressure: bool = False
    busy: float = 0.0
    device: DeviceCounters | None = None
