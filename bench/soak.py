"""`specserve soak`: N concurrent streams for M minutes against one server.

Each stream sends streamed chat completions back to back with a random
prompt, length (max_tokens) and temperature; a fraction of them hang up
part-way (a client disconnect). The run counts requests, HTTP errors,
in-band stream errors and incomplete streams (no finish_reason or no
`data: [DONE]` on a stream the client did not abandon), samples the
server's RSS and /metrics over time, and at the end checks that the engine
is idle again: no running or waiting request, no KV block in use.

By default it starts `specserve serve` itself (so that it knows the PID
whose RSS to sample); `--url` soaks a server that is already running
(`--pid` for its RSS). The report (report.json, report.md) goes to --out.
Exit status 0 only if every criterion holds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import httpx

from bench.scrape import parse_metrics
from bench.servers import specserve_server
from bench.sse import SSEParser

TOPICS = ("the sea", "a small robot", "prime numbers", "the history of bread", "rain in the city",
          "how a compiler works", "a chess opening", "the moon landing", "photosynthesis",
          "a recipe for soup", "sorting algorithms", "the water cycle")
STYLES = ("Write a short poem about {}.", "Explain {} to a child.", "List five facts about {}.",
          "Tell a story about {}.", "Summarise what you know about {} in detail.")


@dataclass(frozen=True)
class SoakConfig:
    """What the soak sends, for how long, and when it passes."""

    streams: int = 32
    minutes: float = 10.0
    disconnect_fraction: float = 0.1
    min_tokens: int = 1
    max_tokens: int = 256
    max_temperature: float = 1.5
    warmup_minutes: float = 1.0
    sample_seconds: float = 10.0
    max_rss_growth: float = 0.05  # after warm-up
    idle_timeout_s: float = 60.0
    seed: int = 0


@dataclass
class Tally:
    """What the streams saw; errors of each kind are listed (first 20 kept)."""

    requests: int = 0
    completed: int = 0
    disconnected: int = 0
    http_errors: int = 0
    stream_errors: int = 0
    incomplete: int = 0
    transport_errors: int = 0
    completion_tokens: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail}"[:300])

    @property
    def errors(self) -> int:
        return self.http_errors + self.stream_errors + self.transport_errors


def random_body(rng: random.Random, config: SoakConfig) -> dict:
    """A streamed chat request with a random prompt, length and temperature."""
    prompt = rng.choice(STYLES).format(rng.choice(TOPICS))
    prompt = " ".join([prompt] * rng.randint(1, 6))  # prompt lengths vary too
    return {"messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": rng.randint(config.min_tokens, config.max_tokens),
            "temperature": round(rng.uniform(0.0, config.max_temperature), 3),
            "stream_options": {"include_usage": True}}


async def one_request(client: httpx.AsyncClient, body: dict, hang_up_after: int | None,
                      tally: Tally) -> None:
    """Send one streamed request; hang up after `hang_up_after` events if set."""
    tally.requests += 1
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            tally.note("http_errors", f"{response.status_code} {response.text}")
            return
        await _read_stream(response, hang_up_after, tally)


async def _read_stream(response: httpx.Response, hang_up_after: int | None, tally: Tally) -> None:
    parser, events, finished, done = SSEParser(), 0, False, False
    async for text in response.aiter_text():
        for event in parser.feed(text):
            events += 1
            if event.data == "[DONE]":
                done = True
                continue
            chunk = json.loads(event.data)
            if "error" in chunk:
                tally.note("stream_errors", event.data)
                return
            finished = finished or any(c.get("finish_reason") for c in chunk.get("choices", ()))
            if chunk.get("usage"):
                tally.completion_tokens += chunk["usage"]["completion_tokens"]
            if hang_up_after is not None and events >= hang_up_after:
                tally.disconnected += 1
                return  # leaving the block closes the connection mid-stream
    if finished and done:
        tally.completed += 1
    else:
        tally.note("incomplete", f"finish_reason seen: {finished}, [DONE] seen: {done}")


async def stream_worker(client: httpx.AsyncClient, rng: random.Random, config: SoakConfig,
                        deadline: float, tally: Tally) -> None:
    """Requests back to back until the deadline."""
    while time.monotonic() < deadline:
        body = random_body(rng, config)
        hang_up = rng.randint(0, 8) if rng.random() < config.disconnect_fraction else None
        try:
            await one_request(client, body, hang_up, tally)
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            tally.note("transport_errors", repr(exc))


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of a process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def engine_gauges(client: httpx.AsyncClient) -> dict[str, float]:
    values = parse_metrics((await client.get("/metrics", timeout=10)).text)
    return {name: values.get(f"specserve:{name}", float("nan"))
            for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")}


async def sample(client: httpx.AsyncClient, pid: int | None, started: float, tally: Tally) -> dict:
    """One point of the time series."""
    point = {"t_s": round(time.monotonic() - started, 1), "rss_bytes": rss_bytes(pid),
             "requests": tally.requests, "errors": tally.errors}
    try:
        point.update(await engine_gauges(client))
    except (httpx.HTTPError, ValueError) as exc:
        point["metrics_error"] = repr(exc)
    return point


async def sampler(client: httpx.AsyncClient, pid: int | None, config: SoakConfig,
                  started: float, deadline: float, tally: Tally, series: list[dict]) -> None:
    while time.monotonic() < deadline:
        series.append(await sample(client, pid, started, tally))
        await asyncio.sleep(min(config.sample_seconds, max(0.0, deadline - time.monotonic())))


async def wait_idle(client: httpx.AsyncClient, timeout_s: float) -> dict[str, float]:
    """The engine's gauges once it is idle (or when the timeout ends)."""
    end = time.monotonic() + timeout_s
    while True:
        gauges = await engine_gauges(client)
        if not any(gauges.values()) or time.monotonic() > end:
            return gauges
        await asyncio.sleep(0.5)


async def soak(base_url: str, pid: int | None, config: SoakConfig) -> dict:
    """Run the soak against a ready server; the report as a dict."""
    tally, series = Tally(), []
    limits = httpx.Limits(max_connections=config.streams + 4)
    timeout = httpx.Timeout(600.0, connect=30.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        deadline = started + config.minutes * 60
        workers = [stream_worker(client, random.Random(config.seed * 1000 + i), config, deadline,
                                 tally) for i in range(config.streams)]
        await asyncio.gather(sampler(client, pid, config, started, deadline, tally, series),
                             *workers)
        idle = await wait_idle(client, config.idle_timeout_s)
        series.append(await sample(client, pid, started, tally))
    return build_report(config, tally, series, idle, time.monotonic() - started)


def build_report(config: SoakConfig, tally: Tally, series: list[dict], idle: dict,
                 wall_s: float) -> dict:
    """Figures and verdicts: errors, incomplete streams, RSS growth, idle engine."""
    rss = _rss_after_warmup(series, config.warmup_minutes * 60)
    growth = (rss[-1] - rss[0]) / rss[0] if len(rss) >= 2 else None
    checks = {
        "no_http_errors": tally.http_errors == 0 and tally.transport_errors == 0,
        "no_stream_errors": tally.stream_errors == 0,
        "no_incomplete_streams": tally.incomplete == 0,
        "engine_idle_at_end": all(v == 0 for v in idle.values()),
        "rss_growth_ok": growth is None or growth < config.max_rss_growth,
    }
    return {"config": asdict(config), "wall_s": round(wall_s, 1), "tally": asdict(tally),
            "rss_after_warmup_bytes": {"first": rss[0] if rss else None,
                                       "last": rss[-1] if rss else None,
                                       "max": max(rss) if rss else None},
            "rss_growth_after_warmup": growth, "idle_at_end": idle, "checks": checks,
            "passed": all(checks.values()), "series": series}


def _rss_after_warmup(series: list[dict], warmup_s: float) -> list[int]:
    return [p["rss_bytes"] for p in series if p["t_s"] >= warmup_s and p.get("rss_bytes")]


def markdown(report: dict) -> str:
    """A short human-readable summary of the report."""
    t, rss, mib = report["tally"], report["rss_after_warmup_bytes"], 2**20
    growth = report["rss_growth_after_warmup"]
    lines = [
        f"# Soak: {report['config']['streams']} streams x {report['config']['minutes']} min",
        "",
        "| figure | value |", "| --- | --- |",
        f"| requests | {t['requests']} |", f"| completed streams | {t['completed']} |",
        f"| client disconnects (deliberate) | {t['disconnected']} |",
        f"| HTTP errors | {t['http_errors']} |", f"| transport errors | {t['transport_errors']} |",
        f"| in-band stream errors | {t['stream_errors']} |",
        f"| incomplete streams | {t['incomplete']} |",
        f"| completion tokens | {t['completion_tokens']} |",
    ]
    if rss["first"]:
        lines.append(f"| RSS after warm-up: first / last / max (MiB) | {rss['first'] / mib:.0f} / "
                     f"{rss['last'] / mib:.0f} / {rss['max'] / mib:.0f} |")
        lines.append(f"| RSS growth after warm-up | {growth:+.2%} |")
    idle = report["idle_at_end"]
    lines += [f"| at the end: running / waiting / KV in use | {idle['num_requests_running']:g} / "
              f"{idle['num_requests_waiting']:g} / {idle['kv_cache_usage_perc']:g} |",
              f"| passed | {report['passed']} ({', '.join(k for k, v in report['checks'].items() if not v) or 'all checks'}) |"]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SoakConfig()
    p.add_argument("--url", default=None, help="soak this running server instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the PID whose RSS to sample")
    p.add_argument("--model", default=None, help="model of the server started (default: SmolLM2)")
    p.add_argument("--server-args", default="", help="more `specserve serve` flags, one string")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server started")
    p.add_argument("--streams", type=int, default=d.streams)
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--disconnect-fraction", type=float, default=d.disconnect_fraction)
    p.add_argument("--min-tokens", type=int, default=d.min_tokens)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--max-temperature", type=float, default=d.max_temperature)
    p.add_argument("--warmup-minutes", type=float, default=d.warmup_minutes)
    p.add_argument("--sample-seconds", type=float, default=d.sample_seconds)
    p.add_argument("--max-rss-growth", type=float, default=d.max_rss_growth)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="report folder (default: bench/results/<date>-soak)")


def config_from_args(args: argparse.Namespace) -> SoakConfig:
    return SoakConfig(streams=args.streams, minutes=args.minutes,
                      disconnect_fraction=args.disconnect_fraction, min_tokens=args.min_tokens,
                      max_tokens=args.max_tokens, max_temperature=args.max_temperature,
                      warmup_minutes=args.warmup_minutes, sample_seconds=args.sample_seconds,
                      max_rss_growth=args.max_rss_growth, seed=args.seed)


def run_from_args(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = Path(args.out or Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-soak")
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        report = asyncio.run(soak(args.url, args.pid, config))
    else:
        with specserve_server(args.model, out, args.server_args.split(), threads=args.threads) as srv:
            report = asyncio.run(soak(srv.base_url, srv.process.pid, config))
            report["server_exit_code"] = srv.stop()
    report["command"] = " ".join(["specserve", "soak", *_argv_of(args)])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


def _argv_of(args: argparse.Namespace) -> Sequence[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(args).items())
            if not k.startswith("_") and k != "command" and v not in (None, "")]
