"""Concurrency sweep of specserve under several server configurations.

For the load-aware scheduler: speculation pays at low load and costs at high
load, so each configuration (a list of extra `specserve serve` flags) is run
over the same concurrency sweep and prompts, one server at a time, and the
per-user and aggregate tokens/s are printed side by side and plotted.

The host's speed drifts between runs, so a one-after-another sweep can put
a drift between two configurations. `--rounds N` runs every configuration
N times in rotating order and adds a table of medians over the rounds and
the median of each round's ratio to the first configuration (the pairs
ran minutes apart, not a whole sweep apart).

A configuration names flags that may not exist yet: the server then exits
at start-up and the sweep stops with its error (or, with --keep-going,
records it and goes on).

    python -m bench.spec_sweep
    python -m bench.spec_sweep --config "off=--verify-policy off" \\
        --config "k4=--speculative-method ngram --verify-policy static --num-speculative-tokens 4"
    python -m bench.spec_sweep --rounds 3 --concurrency 8,32 --config "off=--verify-policy off" \\
        --config "ngram=--speculative-method ngram"
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import shlex
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from bench.datasets import DATASETS, load_prompts
from bench.loadgen import LoadConfig, Target, sweep_concurrency
from bench.plots import plot_latency, plot_throughput
from bench.run import RESULTS_DIR, level_record, machine_info, write_json
from bench.servers import ServerFailed, specserve_server

NGRAM = "--speculative-method ngram"
DEFAULT_CONFIGS = (
    "off=--verify-policy off",
    f"static-k2={NGRAM} --verify-policy static --num-speculative-tokens 2",
    f"static-k4={NGRAM} --verify-policy static --num-speculative-tokens 4",
    f"static-k8={NGRAM} --verify-policy static --num-speculative-tokens 8",
    f"adaptive={NGRAM} --verify-policy adaptive",
)
SERVED_NAME = "model"


@dataclass(frozen=True)
class ServerConfig:
    """A named list of extra `specserve serve` flags."""

    name: str
    flags: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> "ServerConfig":
        """'NAME=FLAGS...' (or just flags, named after themselves)."""
        name, sep, flags = text.partition("=")
        if not sep or name.startswith("-"):
            name, flags = text.strip() or "default", text
        return ServerConfig(name.strip(), tuple(shlex.split(flags)))


def sweep_config(config: ServerConfig, model: str | None, prompts, concurrency: Sequence[int],
                 load: LoadConfig, out_dir: Path, threads: int | None,
                 log: Callable[[str], None] = print) -> dict:
    """One server with these flags over the whole sweep; ServerFailed if it won't start."""
    flags = (*config.flags, "--served-model-name", SERVED_NAME)
    with specserve_server(model, out_dir / "raw" / "logs", flags, name=config.name, threads=threads) as server:
        log(f"[{config.name}] ready: {shlex.join(server.command)}")
        target = Target(config.name, server.base_url, SERVED_NAME, ignore_eos_body={"ignore_eos": True},
                        metrics_path="/metrics")
        levels = asyncio.run(sweep_concurrency(target, prompts, concurrency, load, log=log))
    return {"name": config.name, "flags": list(config.flags), "levels": [level_record(lv) for lv in levels]}


def side_by_side(records: Sequence[dict]) -> str:
    """Rows: concurrency; columns: per-user / aggregate / steady aggregate
    tok/s (and tau) per config (bench.stats defines them)."""
    ok = [r for r in records if r.get("levels")]
    head = "| conc. | " + " | ".join(f"{r['name']} user / agg / steady agg tok/s (tau)" for r in ok) + " |"
    lines = [head, "|---|" + "---|" * len(ok)]
    concurrencies = sorted({lv["concurrency"] for r in ok for lv in r["levels"]})
    for c in concurrencies:
        cells = [_cell(next((lv for lv in r["levels"] if lv["concurrency"] == c), None)) for r in ok]
        lines.append(f"| {c:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(level: dict | None) -> str:
    if level is None:
        return "-"
    user, agg = level["per_user_tokens_per_s"], level["aggregate_tokens_per_s"]
    steady = level.get("steady_aggregate_tokens_per_s")  # absent from results of older runs
    spec = level.get("spec_decode") or {}
    tau = spec.get("mean_accepted_length")
    text = f"{_n(user)} / {_n(agg)} / {_n(steady)}"
    sources = spec.get("by_source") or {}
    # A hybrid's blocks by source: which of its drafters the level drafted with.
    split = "; " + ", ".join(f"{s} {c['drafts']:g}" for s, c in sorted(sources.items())) if len(sources) > 1 else ""
    return text + (f" ({tau:.2f}{split})" if tau else "")


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# What the rounds table compares: per-user tok/s (what one user feels) and
# the steady aggregate (the server's rate while every user is busy).
ROUND_METRICS = ("per_user_tokens_per_s", "steady_aggregate_tokens_per_s")


def rotated(items: Sequence, turn: int) -> list:
    """`items` starting at position turn (mod len): round r's order."""
    k = turn % len(items) if items else 0
    return [*items[k:], *items[:k]]


def round_medians(records: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """config -> concurrency -> metric -> {"median", "ratio"}: the median of
    the metric over the rounds, and the median over the rounds of its
    ratio to the first config's in the same round (None where a round
    lacks the figure)."""
    ok = [r for r in records if r.get("rounds")]
    if not ok:
        return {}
    baseline = ok[0]
    out: dict[str, dict[str, dict]] = {}
    for record in ok:
        per_level = out.setdefault(record["name"], {})
        for c in sorted({lv["concurrency"] for levels in record["rounds"] for lv in levels}):
            per_level[str(c)] = {m: _median_and_ratio(record, baseline, c, m) for m in ROUND_METRICS}
    return out


def _median_and_ratio(record: dict, baseline: dict, concurrency: float, metric: str) -> dict:
    values = [_figure(levels, concurrency, metric) for levels in record["rounds"]]
    bases = [_figure(levels, concurrency, metric) for levels in baseline["rounds"]]
    ratios = [v / b for v, b in zip(values, bases) if v is not None and b]
    present = [v for v in values if v is not None]
    return {"median": statistics.median(present) if present else None,
            "ratio": statistics.median(ratios) if ratios else None,
            "per_round": values}


def _figure(levels: Sequence[dict], concurrency: float, metric: str) -> float | None:
    level = next((lv for lv in levels if lv["concurrency"] == concurrency), None)
    return None if level is None else level.get(metric)


def rounds_table(medians: dict[str, dict[str, dict]]) -> str:
    """Rows: concurrency; per config the medians over rounds of per-user and
    steady aggregate tok/s, each with its median per-round ratio to the
    first config."""
    names = list(medians)
    head = "| conc. | " + " | ".join(f"{n} user tok/s (ratio) / steady agg (ratio)" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    concurrencies = sorted({c for per in medians.values() for c in per}, key=float)
    for c in concurrencies:
        cells = []
        for name in names:
            figures = medians[name].get(c)
            cells.append("-" if figures is None else " / ".join(
                f"{_n(figures[m]['median'])} ({_r(figures[m]['ratio'])})" for m in ROUND_METRICS))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


# ------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=None, metavar="NAME=FLAGS",
                   help="a server configuration (repeatable); default: " + "; ".join(DEFAULT_CONFIGS))
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--dataset", default="code-copy", choices=sorted(DATASETS))
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-level", type=int, default=8, help="at least 2 per user anyway")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--drain-seconds", type=float, default=60.0)
    p.add_argument("--model", default=None, help="default: the server's default model")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--keep-going", action="store_true", help="record a failing config and go on")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every config this many times in rotating order; medians and ratios over rounds")


def run_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    configs = [ServerConfig.parse(c) for c in (args.config or DEFAULT_CONFIGS)]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    prompts = load_prompts(args.dataset, args.num_prompts, args.seed)
    load = LoadConfig(max_tokens=args.max_tokens, num_requests=args.requests_per_level,
                      max_seconds=args.max_seconds, drain_seconds=args.drain_seconds)
    out_dir = _out_dir(args.out_dir)
    rounds = args.rounds
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    records = {c.name: {"name": c.name, "flags": list(c.flags), "levels": [], "rounds": []} for c in configs}
    status = 0
    for turn in range(rounds):
        for config in rotated(configs, turn):
            record = records[config.name]
            if "error" in record:
                continue
            if rounds > 1:
                log(f"[{config.name}] round {turn + 1} of {rounds}")
            if not _sweep_into(record, config, args, prompts, concurrency, load, out_dir, log):
                status = 2
                if not args.keep_going:
                    break
        if status and not args.keep_going:
            break
    _write(out_dir, list(records.values()), vars(args), log, rounds)
    return status


def _sweep_into(record: dict, config: ServerConfig, args: argparse.Namespace, prompts, concurrency, load,
                out_dir: Path, log: Callable[[str], None]) -> bool:
    """One round of `config` into its record; False (and the error recorded)
    if its server would not start."""
    try:
        levels = sweep_config(config, args.model, prompts, concurrency, load, out_dir, args.threads, log)["levels"]
    except ServerFailed as exc:
        log(f"[{config.name}] server failed with flags {list(config.flags)}:\n{exc}")
        record.update(levels=[], rounds=[], error=str(exc))
        return False
    # Per-request records stay with the first round's levels (raw/requests.json).
    record["rounds"].append([{k: v for k, v in lv.items() if k != "requests"} for lv in levels])
    if len(record["rounds"]) == 1:
        record["levels"] = levels  # the first round's, for the side-by-side table and plots
    return True


def _out_dir(path: str | None) -> Path:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out = Path(path) if path else RESULTS_DIR / f"spec-sweep-{stamp}-{socket.gethostname()}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(out_dir: Path, records: list[dict], args: dict, log: Callable[[str], None], rounds: int = 1) -> None:
    table = side_by_side(records)
    log(table)
    data = {"args": {k: v for k, v in args.items() if not callable(v)}, "machine": machine_info(),
            "configs": records}
    if rounds > 1:
        data["round_medians"] = round_medians(records)
        ratios = rounds_table(data["round_medians"])
        log(ratios)
        (out_dir / "rounds.md").write_text(ratios + "\n")
    write_json(out_dir, data, "configs")
    (out_dir / "table.md").write_text(table + "\n")
    series = {r["name"]: r["levels"] for r in records if r["levels"]}
    if series:
        plot_throughput(series, out_dir / "throughput.png", "specserve configurations")
        plot_latency(series, out_dir / "latency.png", "specserve configurations")
    log(f"wrote {out_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spec_sweep", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
