"""Poisson-arrival sweep of specserve configurations against request rate.

For load-aware verification (README, "Load-aware verification"): every
configuration serves the same seeded Poisson arrivals at each rate, from
light load to beyond saturation. Rates are the outer loop and the
configurations take turns within each rate (the order reversed on every
repeat), each in a fresh server that is warmed up first, so the machine's
drifting background load falls on all of them alike; `--repeats` runs the
sweep again, and the spread between repeats is the noise to quote.
Configurations named in `--light-configs` run only at rates up to
`--light-max-rate` (the per-user comparison at light load).

Per level: output tokens/s, per-user tokens/s, TTFT and ITL (gaps between
streamed chunks) p50/p99, TPOT, goodput (requests meeting TTFT <= --slo-ttft
and TPOT <= --slo-tpot), and from /metrics the step budget given to prefill,
decoding and drafts, and tau. Results: results.json, table.md and plots
(bench/load_report.py) under bench/results/<date>-load/.

    python -m bench.load_sweep --rates 0.1,0.3,0.6,1,1.6 --repeats 2
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.datasets import DATASETS, load_prompts
from bench.load_report import Slo, level_summary, write_report
from bench.loadgen import LoadConfig, Target, new_client, run_rate, warm_up
from bench.run import RESULTS_DIR, machine_info
from bench.servers import ServerFailed, specserve_server
from bench.spec_sweep import SERVED_NAME, ServerConfig

NGRAM = "--speculative-method ngram"
DEFAULT_CONFIGS = (
    "off=--verify-policy off",
    f"adaptive={NGRAM} --verify-policy adaptive --num-speculative-tokens 8",
    f"static-k2={NGRAM} --verify-policy static --num-speculative-tokens 2",
    f"static-k4={NGRAM} --verify-policy static --num-speculative-tokens 4",
    f"static-k8={NGRAM} --verify-policy static --num-speculative-tokens 8",
)
BUDGET_METRIC = "specserve:scheduled_tokens"


async def budget_split(client: httpx.AsyncClient, target: Target) -> dict[str, float]:
    """Step budget given so far to prefill, decode and draft tokens (/metrics)."""
    response = await client.get(target.base_url + "/metrics", timeout=10.0)
    response.raise_for_status()
    split = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == BUDGET_METRIC:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    split[sample.labels["kind"]] = sample.value
    return split


async def measure_level(target: Target, prompts, rate: float, load: LoadConfig, seed: int,
                        first_prompt: int) -> tuple:
    """Warm the server up, then one Poisson level; the level and its budget split."""
    async with new_client(load) as client:
        await warm_up(client, target, prompts, load)
        before = await budget_split(client, target)
        level = await run_rate(client, target, prompts, rate, load, seed=seed, first_prompt=first_prompt)
        after = await budget_split(client, target)
    return level, {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in after}


def run_one(config: ServerConfig, rate: float, repeat: int, prompts, load: LoadConfig, seed: int,
            first_prompt: int, out_dir: Path, threads: int | None, log: Callable[[str], None]) -> dict:
    """A fresh server with these flags, one level at `rate`; its record."""
    flags = (*config.flags, "--served-model-name", SERVED_NAME)
    log_dir = out_dir / "raw" / "logs" / f"{rate:g}-{repeat}"
    with specserve_server(None, log_dir, flags, name=config.name, threads=threads) as server:
        target = Target(config.name, server.base_url, SERVED_NAME, ignore_eos_body={"ignore_eos": True},
                        metrics_path="/metrics")
        level, budget = asyncio.run(measure_level(target, prompts, rate, load, seed, first_prompt))
    record = {"name": config.name, "rate": rate, "repeat": repeat, "budget": budget,
              "spec_decode": level.spec_decode, "summary": level.summary,
              "requests": [r.to_json() for r in level.results]}
    log(f"[{config.name}] rate={rate:g} repeat={repeat}: " + _describe(record))
    return record


def _describe(record: dict) -> str:
    s = level_summary(record, Slo())
    return (f"ok={s['completed']}/{s['sent']} agg={s['tokens_per_s']:.1f} tok/s "
            f"user={s['per_user_tokens_per_s'] or 0:.1f} TTFT p50/p99={s['ttft_p50']:.2f}/{s['ttft_p99']:.2f} s "
            f"goodput={s['goodput_fraction']:.2f} drafts={s['draft_share']:.2f} of budget")


def schedule(configs: Sequence[ServerConfig], rates: Sequence[float], repeats: int,
             light: set[str], light_max_rate: float) -> list[tuple[int, float, ServerConfig]]:
    """(repeat, rate, config) in run order: rates ascending, configs taking
    turns within a rate, their order reversed from one rate to the next and
    from one repeat to the next (so no configuration always goes first)."""
    runs = []
    for repeat in range(repeats):
        for index, rate in enumerate(rates):
            turn = [c for c in configs if c.name not in light or rate <= light_max_rate]
            flip = (repeat + index) % 2 == 1
            runs += [(repeat, rate, c) for c in (reversed(turn) if flip else turn)]
    return runs


def level_config(load: LoadConfig, rate: float, seconds_per_level: float, min_requests: int) -> LoadConfig:
    """Requests for about `seconds_per_level` of arrivals at `rate`."""
    num = max(min_requests, round(rate * seconds_per_level))
    return replace(load, num_requests=num, max_seconds=num / rate * 3 + 30)


def run_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    configs = [ServerConfig.parse(c) for c in (args.config or DEFAULT_CONFIGS)]
    rates = [float(r) for r in args.rates.split(",")]
    prompts = load_prompts(args.dataset, args.num_prompts, args.seed)
    base = LoadConfig(max_tokens=args.max_tokens, num_requests=1, drain_seconds=args.drain_seconds,
                      warmup_requests=args.warmup_requests, warmup_max_tokens=32)
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR / f"{datetime.date.today()}-load"
    out_dir.mkdir(parents=True, exist_ok=True)
    light = set(args.light_configs.split(",")) if args.light_configs else set()
    records, status = [], 0
    for repeat, rate, config in schedule(configs, rates, args.repeats, light, args.light_max_rate):
        load = level_config(base, rate, args.seconds_per_level, args.min_requests)
        try:  # the same arrivals and prompts for every configuration at this rate
            records.append(run_one(config, rate, repeat, prompts, load, args.seed + repeat, 0,
                                   out_dir, args.threads, log))
        except ServerFailed as exc:
            log(f"[{config.name}] server failed:\n{exc}")
            status = 2
            break
        _save(out_dir, records, vars(args), log)
    return status


def _save(out_dir: Path, records: list[dict], args: dict, log: Callable[[str], None]) -> None:
    """Write after every level, so a run cut short keeps what it measured:
    results.json (figures per level, small enough to commit), raw/ (every
    request, git-ignored), table.md and load.png."""
    slo = Slo(args["slo_ttft"], args["slo_tpot"])
    slim = [{**{k: v for k, v in r.items() if k != "requests"}, "figures": level_summary(r, slo)}
            for r in records]
    data = {"args": {k: v for k, v in args.items() if not callable(v)}, "machine": machine_info(),
            "slo": vars(slo), "levels": slim}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, default=str))
    (out_dir / "raw").mkdir(exist_ok=True)
    (out_dir / "raw" / "requests.json").write_text(json.dumps(records, default=str))
    write_report(out_dir, records, slo, args)
    log(f"wrote {out_dir}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=None, metavar="NAME=FLAGS",
                   help="a server configuration (repeatable); default: " + "; ".join(DEFAULT_CONFIGS))
    p.add_argument("--rates", default="0.1,0.3,0.6,1,1.6", help="Poisson arrival rates, requests/s")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--light-configs", default="static-k2,static-k4,static-k8",
                   help="configurations run only at light load (comma-separated names)")
    p.add_argument("--light-max-rate", type=float, default=0.1)
    p.add_argument("--seconds-per-level", type=float, default=40.0, help="of Poisson arrivals")
    p.add_argument("--min-requests", type=int, default=12)
    p.add_argument("--dataset", default="mt-bench", choices=sorted(DATASETS))
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--warmup-requests", type=int, default=3)
    p.add_argument("--drain-seconds", type=float, default=180.0)
    p.add_argument("--slo-ttft", type=float, default=2.0, help="seconds")
    p.add_argument("--slo-tpot", type=float, default=0.2, help="seconds per output token")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_sweep", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    print("command: python -m bench.load_sweep " + shlex.join(sys.argv[1:] if argv is None else argv))
    return run_from_args(args)


if __name__ == "__main__":
    raise SystemExit(main())
