"""Per-request records and the summary statistics a benchmark level reports.

Definitions (the same for every system measured):
- TTFT: request sent -> first chunk carrying output text.
- ITL: gaps between consecutive content chunks. A speculative server may put
  several tokens in one chunk, so ITL is per chunk, not per token.
- TPOT: (e2e - TTFT) / (output_tokens - 1), per token, whatever the chunking.
- per-user tokens/s: mean over completed requests of output_tokens / e2e.
- aggregate tokens/s: all output tokens of completed requests / level wall time.
- steady aggregate tokens/s (fixed concurrency): output tokens emitted while
  every user had a request in flight (from the start until the last request
  was sent) / that window. The rest of a level is its drain, waiting for the
  slowest users; with a few requests per user it is much of the level, and
  it hides what finishing some requests early (speculation) is worth under
  load. A request's tokens are spread evenly between its first token and
  its end (chunk times are known, tokens per chunk are not).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """What one benchmark request measured; times in seconds."""

    ok: bool
    start: float = 0.0  # offset from the level's start
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    token_count_source: str = "none"  # usage | tokenizer | chunks | none
    finish_reason: str | None = None
    error: str | None = None
    aborted: bool = False  # cancelled at the benchmark's time limit

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        record = asdict(self)
        record["tpot"] = self.tpot
        return record


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between order statistics.

    Same definition as numpy's default ('linear'): rank = q/100 * (n - 1).
    """
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict:
    """Mean and the reported percentiles of `values` (None when empty)."""
    stats = {"mean": sum(values) / len(values) if values else None}
    for q in PERCENTILES:
        stats[f"p{q}"] = percentile(values, q)
    return stats


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def tokens_before(result: RequestResult, until: float) -> float:
    """Output tokens `result` had received `until` seconds into the level
    (its tokens spread evenly from its first token to its end)."""
    if not result.ok or result.ttft is None or result.e2e is None or result.output_tokens == 0:
        return 0.0
    first, last = result.start + result.ttft, result.start + result.e2e
    if last <= until:
        return float(result.output_tokens)
    if first > until:
        return 0.0
    return 1.0 + (result.output_tokens - 1) * (until - first) / (last - first)


def steady_aggregate(results: Sequence[RequestResult], until: float | None) -> float | None:
    """Output tokens/s over the first `until` seconds of the level (module doc)."""
    if until is None or until <= 0:
        return None
    return sum(tokens_before(r, until) for r in results) / until


def summarize(results: Sequence[RequestResult], duration: float, steady_until: float | None = None) -> dict:
    """The level's summary; `duration` is its wall time from first send to
    last end, `steady_until` the end of its steady part (None: none)."""
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    sources = sorted({r.token_count_source for r in done})
    return {
        "sent": len(results),
        "completed": len(done),
        "failed": len(results) - len(done),
        "aborted": sum(r.aborted for r in results),
        "duration_s": duration,
        "output_tokens": output_tokens,
        "token_count_source": ",".join(sources) or "none",
        "request_throughput": len(done) / duration if duration > 0 else None,
        "aggregate_tokens_per_s": output_tokens / duration if duration > 0 else None,
        "steady_window_s": steady_until,
        "steady_aggregate_tokens_per_s": steady_aggregate(results, steady_until),
        "per_user_tokens_per_s": _mean(r.output_tokens / r.e2e for r in done if r.e2e),
        "ttft_s": distribution([r.ttft for r in done if r.ttft is not None]),
        "itl_s": distribution([gap for r in done for gap in r.itl]),
        "tpot_s": distribution([r.tpot for r in done if r.tpot is not None]),
        "e2e_s": distribution([r.e2e for r in done if r.e2e is not None]),
        "errors": _error_counts(results),
    }


def _error_counts(results: Sequence[RequestResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "unknown")[:200]
            counts[key] = counts.get(key, 0) + 1
    return counts
