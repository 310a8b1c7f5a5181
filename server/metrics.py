"""Prometheus metrics, named like vLLM's (`vllm:` -> `specserve:`).

Each app owns a CollectorRegistry so several apps in one process (tests,
embedding) never collide on metric names. Latency and per-request token
figures are observed by serving as outputs flow; engine gauges and
speculative counters are read from `engine_client.stats()` at scrape time,
so they are never stale and cost nothing between scrapes.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.interface import EngineClient
from engine.outputs import EngineStats, PolicyStats, RequestOutput
from scheduler.load import LoadStats

logger = logging.getLogger(__name__)

PREFIX = "specserve:"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                60.0, 120.0, 240.0, 480.0, 960.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class EngineStatsCollector(Collector):
    """Exports the engine's gauges and speculative counters on each scrape."""

    def __init__(self, engine_client: EngineClient):
        self._engine = engine_client

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from calling stats() early.
        return []

    def collect(self) -> Iterator[Metric]:
        healthy = bool(self._engine.is_healthy)
        yield _gauge("engine_healthy", "1 if the engine loop is running", float(healthy))
        try:
            stats = self._engine.stats()
        except Exception:  # a dying engine must not break the scrape
            logger.warning("engine stats unavailable", exc_info=True)
            return
        yield _gauge("num_requests_running", "Requests in the running batch", stats.num_running)
        yield _gauge("num_requests_waiting", "Requests waiting to be scheduled", stats.num_waiting)
        yield _gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)",
                     stats.kv_cache_usage)
        yield _counter("num_preemptions", "Requests preempted", stats.num_preemptions)
        yield _counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                       stats.prefix_cache_queries)
        yield _counter("prefix_cache_hits", "Prompt tokens found in the prefix cache (KV not recomputed)",
                       stats.prefix_cache_hits)
        yield from self._spec_metrics(stats)
        yield from self._verify_metrics(stats.policy)
        yield from _load_metrics(stats.load)
        yield from _device_metrics(self._engine.device)

    @staticmethod
    def _spec_metrics(stats: EngineStats) -> Iterator[Metric]:
        yield _counter("spec_decode_num_drafts", "Verification steps with drafts",
                       stats.num_drafts)
        yield _counter("spec_decode_num_draft_tokens", "Draft tokens proposed",
                       stats.num_draft_tokens)
        yield _counter("spec_decode_num_accepted_tokens", "Draft tokens accepted",
                       stats.num_accepted_tokens)
        yield _counter("spec_grammar_cut_draft_tokens",
                       "Draft tokens cut before verification because the request's grammar forbids them",
                       stats.num_grammar_cut_draft_tokens)
        yield from _alternative_metrics(stats)
        per_pos = CounterMetricFamily(
            PREFIX + "spec_decode_num_accepted_tokens_per_pos",
            "Accepted draft tokens by position in the draft", labels=["position"])
        for pos, count in enumerate(stats.accepted_per_position):
            per_pos.add_metric([str(pos)], count)
        yield per_pos
        yield _gauge("spec_decode_mean_accepted_length",
                     "Tokens emitted per verification step, bonus included",
                     stats.mean_accepted_length)
        yield from _source_metrics(stats)

    @staticmethod
    def _verify_metrics(stats: PolicyStats) -> Iterator[Metric]:
        """The verification policy: what it chose, how well its confidences
        predicted acceptance, and the step-cost curve it used."""
        lengths = CounterMetricFamily(PREFIX + "spec_verify_length",
                                      "Verification lengths chosen per request and step",
                                      labels=["length"])
        for length, count in enumerate(stats.verify_length_counts):
            lengths.add_metric([str(length)], count)
        yield lengths
        yield _counter("spec_calibration_observations", "Verified draft positions observed",
                       stats.calibration_observations)
        yield _gauge("spec_calibration_predicted_acceptance",
                     "Mean predicted survival of verified draft positions",
                     stats.calibration_predicted)
        yield _gauge("spec_calibration_realised_acceptance",
                     "Realised acceptance rate of verified draft positions",
                     stats.calibration_realised)
        yield _gauge("spec_calibration_error", "Expected calibration error of draft confidences",
                     stats.calibration_error)
        sps = GaugeMetricFamily(PREFIX + "step_cost_steps_per_second",
                                "Target forward steps per second against batch query tokens (SPS(B))",
                                labels=["batch_tokens"])
        for batch_tokens, steps_per_second in stats.step_cost_table:
            sps.add_metric([str(batch_tokens)], steps_per_second)
        yield sps


def _alternative_metrics(stats: EngineStats) -> Iterator[Metric]:
    """Token trees: the drafts' alternative branches (engine/spec/tree.py)."""
    for name, doc, attribute in (
            ("alternatives", "Alternative draft branches verified", "num_alternatives"),
            ("alternative_draft_tokens", "Draft tokens of the alternative branches verified",
             "num_alternative_draft_tokens"),
            ("alternative_wins", "Verification steps whose emitted drafts came from an alternative",
             "num_alternative_wins"),
            ("alternative_accepted_tokens", "Draft tokens accepted from alternative branches",
             "num_alternative_accepted_tokens"),
            ("alternatives_dropped", "Alternative branches left out for want of scratch KV blocks",
             "num_alternatives_dropped")):
        yield _counter(f"spec_tree_{name}", doc, getattr(stats, attribute))


def _source_metrics(stats: EngineStats) -> Iterator[Metric]:
    """The speculative counters per drafter that proposed the block (the
    hybrid's n-gram and head apart), and the drafter's own events."""
    for name, doc, attribute in (
            ("spec_decode_num_drafts_by_source", "Verification steps with drafts, by the drafter that proposed them",
             "num_drafts"),
            ("spec_decode_num_draft_tokens_by_source", "Draft tokens verified, by the drafter that proposed them",
             "num_draft_tokens"),
            ("spec_decode_num_accepted_tokens_by_source", "Draft tokens accepted, by the drafter that proposed them",
             "num_accepted_tokens")):
        family = CounterMetricFamily(PREFIX + name, doc, labels=["source"])
        for source, counts in sorted(stats.spec_by_source.items()):
            family.add_metric([source], getattr(counts, attribute))
        yield family
    events = CounterMetricFamily(PREFIX + "spec_drafter_events",
                                 "The drafter's own decisions (e.g. the hybrid's skipped head runs)",
                                 labels=["event"])
    for event, count in sorted(stats.drafter_events.items()):
        events.add_metric([event], count)
    yield events


def _load_metrics(load: LoadStats) -> Iterator[Metric]:
    """Where the step budget went, and the load the verification policy saw
    at the last step (queue, KV room, the machine's other tenants)."""
    tokens = CounterMetricFamily(PREFIX + "scheduled_tokens",
                                 "Step budget given to prompt (and recomputed) tokens, "
                                 "decoded tokens and verified drafts", labels=["kind"])
    for kind, count in (("prefill", load.prefill_tokens), ("decode", load.decode_tokens),
                        ("draft", load.draft_tokens)):
        tokens.add_metric([kind], count)
    yield tokens
    yield _counter("spec_kv_backoff_steps", "Steps where KV pressure left drafts unverified",
                   load.kv_backoff_steps)
    yield _gauge("queue_oldest_wait_seconds", "Age of the oldest waiting request at the last step",
                 load.oldest_wait_s)
    yield _gauge("policy_stalled_requests", "Requests present that got no token in the last step",
                 load.num_stalled)
    yield _gauge("policy_arrival_rate", "Requests per second over the recent arrivals",
                 load.arrival_rate)
    yield _gauge("policy_kv_spare_blocks",
                 "KV blocks drafts could take beyond one growth block per running request",
                 load.kv_spare_blocks)
    yield _gauge("policy_kv_pressure", "1 if KV pressure stopped all drafts at the last step",
                 float(load.kv_pressure))
    yield _gauge("policy_machine_busy", "Share of the machine other processes held, as priced",
                 load.busy)
    yield from _sampled_device_metrics(load)


def _sampled_device_metrics(load: LoadStats) -> Iterator[Metric]:
    """The background sampler's counters the policy read (absent when unknown)."""
    device = load.device
    if device is None:
        return
    if device.gpu_other_utilization is not None:
        yield _gauge("gpu_other_utilization_perc", "GPU time (0-1) other processes' kernels ran",
                     device.gpu_other_utilization)
    if device.cpu_wait_fraction is not None:
        yield _gauge("cpu_runqueue_wait_fraction",
                     "Share of runnable time the server's threads waited for a CPU",
                     device.cpu_wait_fraction)


def _device_metrics(device: str) -> Iterator[Metric]:
    """GPU utilisation and memory from NVML, on CUDA only."""
    from engine.device_stats import read_device_stats

    try:
        reading = read_device_stats(device)
    except Exception:  # e.g. nvidia-ml-py missing: say so, keep the scrape alive
        logger.warning("GPU metrics unavailable on %s (install the `cuda` extra)", device, exc_info=True)
        return
    if reading is None:
        return
    yield _gauge("gpu_utilization_perc", "GPU utilisation (0-1) from NVML", reading.utilization)
    yield _gauge("gpu_memory_used_bytes", "GPU memory in use, from NVML", reading.memory_used)
    yield _gauge("gpu_memory_total_bytes", "GPU memory in all, from NVML", reading.memory_total)
    if reading.sm_clock_mhz is not None:
        yield _gauge("gpu_sm_clock_mhz", "GPU SM clock now, from NVML", reading.sm_clock_mhz)
        yield _gauge("gpu_max_sm_clock_mhz", "GPU SM clock at most, from NVML", reading.max_sm_clock_mhz)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


class ServerMetrics:
    """The per-app registry and the request-level metrics serving observes."""

    def __init__(self, engine_client: EngineClient):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "Time to first token", buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds",
                             "Time between output tokens", buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "Request latency, arrival to last token",
                             buckets=_E2E_BUCKETS, registry=r)
        self.prompt_hist = Histogram(PREFIX + "request_prompt_tokens", "Prompt tokens per request",
                                     buckets=_TOKEN_BUCKETS, registry=r)
        self.gen_hist = Histogram(PREFIX + "request_generation_tokens",
                                  "Generated tokens per request", buckets=_TOKEN_BUCKETS,
                                  registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed",
                                     registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated",
                                         registry=r)
        self.request_success = Counter(PREFIX + "request_success", "Finished requests",
                                       ["finished_reason"], registry=r)
        r.register(EngineStatsCollector(engine_client))

    def tracker(self) -> "RequestTracker":
        return RequestTracker(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Times one engine request (one choice) from arrival to its last token."""

    def __init__(self, metrics: ServerMetrics):
        self._m = metrics
        self._arrival = time.monotonic()
        self._last: float | None = None

    def observe(self, out: RequestOutput) -> None:
        """Record latency for one output increment; finish bookkeeping on the last."""
        count = len(out.new_token_ids)
        now = time.monotonic()
        if count:
            self._observe_tokens(now, count)
        if out.finished:
            self._finish(now, out)

    def _observe_tokens(self, now: float, count: int) -> None:
        # One ITL sample per token after the first. A speculative step emits
        # several tokens at once: its time is spread over them (and tokens
        # arriving with the first one had no wait of their own).
        if self._last is None:
            self._m.ttft.observe(now - self._arrival)
            per_token, count = 0.0, count - 1
        else:
            per_token = (now - self._last) / count
        for _ in range(count):
            self._m.itl.observe(per_token)
        self._last = now

    def _finish(self, now: float, out: RequestOutput) -> None:
        m = self._m
        m.e2e.observe(now - self._arrival)
        m.prompt_hist.observe(out.num_prompt_tokens)
        m.gen_hist.observe(out.num_output_tokens)
        m.prompt_tokens.inc(out.num_prompt_tokens)
        m.generation_tokens.inc(out.num_output_tokens)
        m.request_success.labels(finished_reason=out.finish_reason or "unknown").inc()
