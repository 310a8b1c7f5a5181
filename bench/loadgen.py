"""An async load generator for any OpenAI-compatible chat endpoint.

Two ways to load a server:
- fixed concurrency: C workers, each sending its next request when the last
  one ends (a sweep runs several C in turn);
- request rate: arrivals at Poisson times (seeded), optionally capped in
  concurrency.
Every level is bounded in requests and in time: no new request starts after
`max_seconds`, in-flight ones get `drain_seconds` more, then are cancelled
and counted as failed (aborted). So a run always stops by itself.

Streams are read with httpx and parsed by our own SSE parser, which
tolerates servers that never send `data: [DONE]` (transformers serve) or
ignore `stream_options.include_usage` (llama-cpp-python). Output tokens are
counted from `usage` when the server sends it, else by re-tokenizing the
text (when a tokenizer is given), else as the number of content chunks;
each request records which (`token_count_source`).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import httpx

from bench.datasets import DATASETS, Prompt, load_prompts
from bench.scrape import scrape_metrics, spec_decode_summary
from bench.stats import RequestResult, summarize
from bench.stream import Target, TokenCounter, send_request


@dataclass(frozen=True)
class LoadConfig:
    """Request shape and the bounds of one load level."""

    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = True
    include_usage: bool = True
    num_requests: int = 16  # per level
    max_seconds: float = 120.0  # per level: no request starts after this
    drain_seconds: float = 60.0  # then in-flight requests get this long
    request_timeout: float = 300.0  # one request, start to end
    warmup_requests: int = 1
    warmup_max_tokens: int = 16

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.num_requests < 1:
            raise ValueError("max_tokens and num_requests must be positive")
        if self.max_seconds <= 0 or self.drain_seconds < 0 or self.request_timeout <= 0:
            raise ValueError("time bounds must be positive")


# ------------------------------------------------------------ one request


def request_body(target: Target, prompt: Prompt, config: LoadConfig, max_tokens: int | None = None) -> dict:
    body = {
        "model": target.model,
        "messages": list(prompt.messages),
        "max_tokens": max_tokens or config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
    }
    if config.include_usage:
        body["stream_options"] = {"include_usage": True}
    if config.ignore_eos:
        body.update(target.ignore_eos_body)
    body.update(target.extra_body)
    return body


# ------------------------------------------------------------ levels


@dataclass
class LevelResult:
    """One load level: its setting, per-request records and summary."""

    target: str
    mode: str  # concurrency | rate
    value: float  # the concurrency or the request rate
    results: list[RequestResult]
    summary: dict
    spec_decode: dict | None = None

    def to_json(self, with_requests: bool = True) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "results"}
        if with_requests:
            data["requests"] = [r.to_json() for r in self.results]
        return data


class Level:
    """Bookkeeping shared by both modes: prompts in order, records, time bounds."""

    def __init__(self, client, target: Target, prompts: Sequence[Prompt], config: LoadConfig,
                 count_tokens: TokenCounter | None, first_prompt: int = 0):
        self.client, self.target, self.config = client, target, config
        self.prompts = [prompts[(first_prompt + i) % len(prompts)] for i in range(config.num_requests)]
        self.count_tokens = count_tokens
        self.results: list[RequestResult] = []
        self.t0 = time.perf_counter()
        self.next_index = 0
        self.last_send: float | None = None  # when the last prompt was taken

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def may_send(self) -> bool:
        return self.next_index < len(self.prompts) and self.elapsed() < self.config.max_seconds

    def take_prompt(self) -> Prompt:
        prompt = self.prompts[self.next_index]
        self.next_index += 1
        if self.next_index == len(self.prompts):
            self.last_send = self.elapsed()
        return prompt

    def steady_end(self, concurrency: int) -> float | None:
        """Closed loop: every user is busy until the last prompt is sent, or
        until max_seconds stopped the sending; None when the users' first
        requests were all there was."""
        if len(self.prompts) <= concurrency:
            return None
        return self.last_send if self.last_send is not None else self.config.max_seconds

    async def run_one(self, prompt: Prompt) -> None:
        """One request, bounded by request_timeout; recorded even when cancelled."""
        record = RequestResult(ok=False, start=self.elapsed())
        self.results.append(record)
        body = request_body(self.target, prompt, self.config)
        try:
            await asyncio.wait_for(send_request(self.client, self.target, body, record, self.count_tokens),
                                   self.config.request_timeout)
        except asyncio.TimeoutError:
            record.ok, record.error = False, f"timeout after {self.config.request_timeout:.0f} s"
        except asyncio.CancelledError:
            record.ok, record.aborted, record.error = False, True, "aborted at the benchmark's time limit"
            raise

    async def wait_bounded(self, tasks: list[asyncio.Task]) -> None:
        """Wait for tasks until max_seconds + drain_seconds, then cancel the rest."""
        budget = self.config.max_seconds + self.config.drain_seconds - self.elapsed()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(budget, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def finish(self, mode: str, value: float, spec_decode: dict | None,
               steady_until: float | None = None) -> LevelResult:
        duration = self.elapsed()
        return LevelResult(self.target.name, mode, value, self.results,
                           summarize(self.results, duration, steady_until), spec_decode)


async def run_concurrency(client: httpx.AsyncClient, target: Target, prompts: Sequence[Prompt],
                          concurrency: int, config: LoadConfig, count_tokens: TokenCounter | None = None,
                          first_prompt: int = 0) -> LevelResult:
    """`concurrency` closed-loop users share `config.num_requests` requests.

    Requests take prompts in order from `first_prompt` (cycling), so a sweep
    can give each level fresh prompts that no prefix cache has seen.
    """
    before = await scrape_metrics(client, target)
    level = Level(client, target, prompts, config, count_tokens, first_prompt)

    async def user() -> None:
        while level.may_send():
            await level.run_one(level.take_prompt())

    await level.wait_bounded([asyncio.create_task(user()) for _ in range(concurrency)])
    after = await scrape_metrics(client, target)
    return level.finish("concurrency", concurrency, spec_decode_summary(before, after),
                        level.steady_end(concurrency))


def poisson_schedule(rate: float, max_requests: int, max_seconds: float, seed: int = 0) -> list[float]:
    """Arrival offsets (s) of a Poisson process: exponential gaps of mean 1/rate.

    Bounded both ways: at most `max_requests` arrivals, all before `max_seconds`.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while len(arrivals) < max_requests:
        t += rng.expovariate(rate)
        if t >= max_seconds:
            break
        arrivals.append(t)
    return arrivals


async def run_rate(client: httpx.AsyncClient, target: Target, prompts: Sequence[Prompt], rate: float,
                   config: LoadConfig, max_concurrency: int | None = None, seed: int = 0,
                   count_tokens: TokenCounter | None = None, first_prompt: int = 0) -> LevelResult:
    """Open-loop load: requests start at Poisson times whatever the server does."""
    before = await scrape_metrics(client, target)
    level = Level(client, target, prompts, config, count_tokens, first_prompt)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def gated(prompt: Prompt) -> None:
        if gate is None:
            return await level.run_one(prompt)
        async with gate:
            await level.run_one(prompt)

    tasks = []
    for offset in poisson_schedule(rate, config.num_requests, config.max_seconds, seed):
        await asyncio.sleep(max(0.0, offset - level.elapsed()))
        tasks.append(asyncio.create_task(gated(level.take_prompt())))
    await level.wait_bounded(tasks)
    after = await scrape_metrics(client, target)
    return level.finish("rate", rate, spec_decode_summary(before, after))


async def warm_up(client: httpx.AsyncClient, target: Target, prompts: Sequence[Prompt],
                  config: LoadConfig) -> list[RequestResult]:
    """A few short requests, one at a time, so the first level pays no start-up cost."""
    records = []
    for i in range(config.warmup_requests):
        record = RequestResult(ok=False)
        # From the end of the list: the levels start at its beginning.
        body = request_body(target, prompts[-1 - i % len(prompts)], config, config.warmup_max_tokens)
        try:
            await asyncio.wait_for(send_request(client, target, body, record), config.request_timeout)
        except asyncio.TimeoutError:
            record.error = "warm-up timeout"
        records.append(record)
    return records


# ------------------------------------------------------------ sweeps


def new_client(config: LoadConfig, max_connections: int = 256) -> httpx.AsyncClient:
    # Total time is bounded per request by asyncio; httpx only guards each read.
    timeout = httpx.Timeout(config.request_timeout, connect=30.0)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


async def sweep_concurrency(target: Target, prompts: Sequence[Prompt], levels: Sequence[int],
                            config: LoadConfig, count_tokens: TokenCounter | None = None,
                            log: Callable[[str], None] = print, min_rounds: int = 2) -> list[LevelResult]:
    """Warm up once, then run each concurrency level in turn.

    A level sends at least `min_rounds` requests per user, so that the ramp
    down (fewer users left than the concurrency) stays a small part of it.
    """
    async with new_client(config, max(levels) * 2) as client:
        warm = await warm_up(client, target, prompts, config)
        failed = [r.error for r in warm if not r.ok]
        if failed:
            log(f"[{target.name}] warm-up failed: {failed[0]}")
        out, first_prompt = [], 0
        for concurrency in levels:
            level_config = replace(config, num_requests=max(config.num_requests, min_rounds * concurrency))
            level = await run_concurrency(client, target, prompts, concurrency, level_config, count_tokens,
                                          first_prompt)
            first_prompt += level_config.num_requests
            log(f"[{target.name}] " + describe_level(level))
            out.append(level)
        return out


async def sweep_rate(target: Target, prompts: Sequence[Prompt], rates: Sequence[float], config: LoadConfig,
                     max_concurrency: int | None = None, seed: int = 0,
                     count_tokens: TokenCounter | None = None,
                     log: Callable[[str], None] = print) -> list[LevelResult]:
    """Warm up once, then run each request rate (requests/s) in turn."""
    async with new_client(config) as client:
        await warm_up(client, target, prompts, config)
        out = []
        for i, rate in enumerate(rates):
            level = await run_rate(client, target, prompts, rate, config, max_concurrency, seed, count_tokens,
                                   first_prompt=i * config.num_requests)
            log(f"[{target.name}] " + describe_level(level))
            out.append(level)
        return out


def describe_level(level: LevelResult) -> str:
    s = level.summary
    tau = (level.spec_decode or {}).get("mean_accepted_length")
    parts = [
        f"{level.mode}={level.value:g}",
        f"sent={s['sent']} ok={s['completed']} failed={s['failed']}",
        f"agg={_fmt(s['aggregate_tokens_per_s'])} tok/s",
        f"steady agg={_fmt(s['steady_aggregate_tokens_per_s'])} tok/s",
        f"per-user={_fmt(s['per_user_tokens_per_s'])} tok/s",
        f"TTFT p50={_fmt(s['ttft_s']['p50'], 3)} s",
        f"TPOT p50={_fmt(s['tpot_s']['p50'], 4)} s",
    ]
    if tau is not None:
        parts.append(f"tau={tau:.2f}")
    return "  ".join(parts)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """Load any running OpenAI-compatible server; print summaries, optionally save JSON."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=main.__doc__)
    p.add_argument("--url", required=True, help="base URL without /v1, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="the `model` field of each request")
    p.add_argument("--api-key", default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", default="1,8", help="closed-loop sweep, e.g. 1,2,4,8")
    mode.add_argument("--rate", default=None, help="open-loop Poisson sweep in requests/s, e.g. 0.5,1,2")
    p.add_argument("--max-concurrency", type=int, default=None, help="cap for --rate")
    p.add_argument("--dataset", default="chat", choices=sorted(DATASETS))
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--ignore-eos-body", default='{"ignore_eos": true}',
                   help="JSON merged into each request to hold answers to max_tokens ('{}' for none)")
    p.add_argument("--metrics-path", default=None, help="e.g. /metrics on specserve, for tau")
    p.add_argument("--requests-per-level", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--drain-seconds", type=float, default=60.0)
    p.add_argument("--json", default=None, help="write every level (with requests) to this file")
    args = p.parse_args(argv)
    target = Target("target", args.url.rstrip("/"), args.model, args.api_key,
                    ignore_eos_body=json.loads(args.ignore_eos_body), metrics_path=args.metrics_path)
    config = LoadConfig(max_tokens=args.max_tokens, num_requests=args.requests_per_level,
                        max_seconds=args.max_seconds, drain_seconds=args.drain_seconds)
    prompts = load_prompts(args.dataset, args.num_prompts, args.seed)
    if args.rate:
        rates = [float(r) for r in args.rate.split(",")]
        levels = asyncio.run(sweep_rate(target, prompts, rates, config, args.max_concurrency, args.seed))
    else:
        levels = asyncio.run(sweep_concurrency(target, prompts, [int(c) for c in args.concurrency.split(",")],
                                               config))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([lv.to_json() for lv in levels], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
