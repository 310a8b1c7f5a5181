"""Live load: the target's step-cost curve SPS(B) and queue/KV gauges.

SPS(B) is forward steps per second when the packed batch holds B query
tokens. It is profiled once at start-up (cached per model, device and dtype
by the engine), kept monotone non-increasing in B, and refined online from
measured step times with an exponential moving average per batch-size bucket.
"""
from __future__ import annotations

import bisect
import json
import math
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


@dataclass
class LoadSnapshot:
    """What the verification policy knows about the machine right now."""

    cost: StepCostModel
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
