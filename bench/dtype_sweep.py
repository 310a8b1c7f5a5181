"""bfloat16 against float32, batch-invariant or not, in one run.

1. Step costs in process (bench.step_costs): SPS(B) and verification of k
   drafts against a one-token step, for every dtype/kernel mode.
2. End to end over HTTP: each server configuration (dtype, kernel mode,
   speculation off or n-gram + adaptive) serves the chat and code-copy
   prompt sets at concurrency 1 and 8 with the load generator.
3. Greedy agreement: the same prompts once more, one at a time and eight at
   once; each output is compared with its dtype/mode's plain output one at a
   time (speculation and batching must not change a token).

A baseline checkout (`--baseline-checkout /work/main`) adds today's float32
default served from that code, so the new default is measured against it in
the same run. One torch thread everywhere.

    python -m bench.dtype_sweep --baseline-checkout /work/main --out-dir bench/results/DATE-bf16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import httpx
import torch

from bench import step_costs
from bench.datasets import load_prompts
from bench.loadgen import LoadConfig, Target, sweep_concurrency
from bench.run import level_record, machine_info
from bench.servers import REPO_ROOT, ServerProcess, free_port, specserve_command

SERVED_NAME = "model"
NGRAM = ("--speculative-method", "ngram", "--verify-policy", "adaptive")
PLAIN = ("--verify-policy", "off")


@dataclass(frozen=True)
class Config:
    """A server: which checkout runs it and its extra `serve` flags."""

    name: str
    mode: str  # the dtype/kernel mode its outputs are compared within
    speculative: bool
    flags: tuple[str, ...]
    checkout: Path = REPO_ROOT


def configs(baseline: Path | None) -> list[Config]:
    modes = [("float32:invariant", ("--dtype", "float32")),
             ("bfloat16:invariant", ("--dtype", "bfloat16")),
             ("bfloat16:free", ("--dtype", "bfloat16", "--no-batch-invariant"))]
    out = []
    if baseline is not None:
        out += [Config("today-float32-plain", "today", False, ("--dtype", "float32", *PLAIN), baseline),
                Config("today-float32-ngram", "today", True, ("--dtype", "float32", *NGRAM), baseline)]
    for mode, flags in modes:
        out += [Config(f"{mode}-plain", mode, False, (*flags, *PLAIN)),
                Config(f"{mode}-ngram", mode, True, (*flags, *NGRAM))]
    return out


def start_server(config: Config, model: str | None, log_dir: Path) -> ServerProcess:
    port = free_port()
    command = specserve_command(model, port, (*config.flags, "--served-model-name", SERVED_NAME,
                                              "--threads", "1"))
    if (config.checkout / "cli" / "__main__.py").is_file():  # newer checkouts: `python -m cli serve`
        command[command.index("server.cli")] = "cli"
    env = {"PYTHONPATH": str(config.checkout), "OMP_NUM_THREADS": "1"}
    return ServerProcess(config.name, command, port, log_dir / f"{config.name}.log", ready_path="/health",
                         ready_timeout=900.0, env=env, cwd=config.checkout)


# ------------------------------------------------------------ greedy texts


async def greedy_texts(base_url: str, prompts, max_tokens: int, concurrency: int) -> list[str]:
    """Each prompt's greedy output, `concurrency` requests in flight."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=900.0) as client:
        async def one(prompt) -> str:
            body = {"model": SERVED_NAME, "messages": list(prompt.messages), "max_tokens": max_tokens,
                    "temperature": 0.0, "ignore_eos": True}
            async with gate:
                response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]
        return list(await asyncio.gather(*(one(p) for p in prompts)))


def agreement(texts: dict, reference: dict) -> dict:
    """Per prompt set and concurrency: outputs equal to the plain solo ones."""
    return {key: sum(a == b for a, b in zip(outs, reference[key.split("@")[0] + "@1"]))
            for key, outs in texts.items()}


# ------------------------------------------------------------ one server


def run_rounds(configs: Sequence[Config], args, out_dir: Path, log: Callable[[str], None]) -> list[dict]:
    """Every config once per round, in reverse order on odd rounds, so slow
    spells of a shared machine spread over the configs; texts in round one."""
    records = {c.name: {"name": c.name, "mode": c.mode, "speculative": c.speculative, "flags": list(c.flags),
                        "checkout": str(c.checkout), "commit": _commit(c.checkout), "rounds": [], "texts": {}}
               for c in configs}
    for r in range(args.rounds):
        for config in (configs if r % 2 == 0 else list(reversed(configs))):
            records[config.name]["rounds"].append(run_config(config, args, out_dir, log, records[config.name]))
    return list(records.values())


def run_config(config: Config, args, out_dir: Path, log: Callable[[str], None], record: dict) -> dict:
    """One server: the load levels of each prompt set (and the greedy texts
    the first time); returns this round's levels."""
    load = LoadConfig(max_tokens=args.max_tokens, num_requests=args.requests_per_level,
                      max_seconds=args.max_seconds, drain_seconds=args.max_seconds)
    this_round = {"load_before": os.getloadavg(), "levels": {}}
    with start_server(config, args.model, out_dir / "raw" / "logs") as server:
        log(f"[{config.name}] ready in {server.ready_seconds:.0f} s: {shlex.join(server.command)}")
        target = Target(config.name, server.base_url, SERVED_NAME, ignore_eos_body={"ignore_eos": True},
                        metrics_path="/metrics")
        for dataset in args.datasets:
            prompts = load_prompts(dataset, args.num_prompts, args.seed)
            levels = asyncio.run(sweep_concurrency(target, prompts, args.concurrency, load, log=log))
            this_round["levels"][dataset] = [level_record(lv) for lv in levels]
            if f"{dataset}@1" in record["texts"]:
                continue  # the greedy texts are taken in the first round only
            for c in (1, 8):
                record["texts"][f"{dataset}@{c}"] = asyncio.run(
                    greedy_texts(server.base_url, prompts, args.max_tokens, c))
    this_round["load_after"] = os.getloadavg()
    return this_round


def _commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------ reports


def best_levels(record: dict) -> dict:
    """(dataset, concurrency) -> best per-user and aggregate tok/s over the
    rounds, and how far the rounds' per-user figures spread."""
    out: dict = {}
    for rnd in record["rounds"]:
        for dataset, levels in rnd["levels"].items():
            for lv in levels:
                entry = out.setdefault((dataset, lv["concurrency"]), {"user": [], "agg": [], "tau": []})
                entry["user"].append(lv["per_user_tokens_per_s"] or 0.0)
                entry["agg"].append(lv["aggregate_tokens_per_s"] or 0.0)
                entry["tau"].append((lv.get("spec_decode") or {}).get("mean_accepted_length"))
    return {k: {"user": max(v["user"]), "agg": max(v["agg"]), "tau": v["tau"][0],
                "spread": (max(v["user"]) - min(v["user"])) / max(min(v["user"]), 1e-9)}
            for k, v in out.items()}


def e2e_table(records: Sequence[dict], datasets: Sequence[str]) -> str:
    """Rows: configs; per dataset and concurrency: best per-user / aggregate
    tok/s over the rounds (their per-user spread in brackets)."""
    best = {r["name"]: best_levels(r) for r in records}
    levels = sorted({c for b in best.values() for (_, c) in b})
    head = "| config | " + " | ".join(f"{d} c={c:g} user / agg tok/s" for d in datasets for c in levels) + " |"
    lines = [head, "|---|" + "---|" * (len(datasets) * len(levels))]
    for r in records:
        cells = []
        for d in datasets:
            for c in levels:
                e = best[r["name"]].get((d, c))
                cells.append("-" if e is None else f"{e['user']:.1f} / {e['agg']:.1f} ({e['spread']:.0%})")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(records: Sequence[dict], datasets: Sequence[str], reference: str) -> str:
    """Each config's best single-stream per-user and 8-stream aggregate tok/s
    over the reference config's (same prompt set)."""
    best = {r["name"]: best_levels(r) for r in records}
    if reference not in best:
        return f"(no {reference} config)"
    cols = [(d, c, key) for d in datasets for c, key in ((1, "user"), (8, "agg"))]
    lines = ["| config | " + " | ".join(f"{d} c={c} {k}" for d, c, k in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in records:
        cells = []
        for d, c, key in cols:
            mine, ref = best[r["name"]].get((d, c)), best[reference].get((d, c))
            cells.append("-" if not mine or not ref else f"{mine[key] / ref[key]:.2f}x")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_table(records: Sequence[dict], num_prompts: int) -> str:
    """Greedy outputs equal to the same mode's plain outputs one at a time."""
    plain = {r["mode"]: r["texts"] for r in records if not r["speculative"]}
    keys = sorted({k for r in records for k in r["texts"]})
    lines = ["| config | " + " | ".join(f"{k} equal / {num_prompts}" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for r in records:
        if r["mode"] not in plain:
            continue
        counts = agreement(r["texts"], plain[r["mode"]])
        lines.append(f"| {r['name']} | " + " | ".join(str(counts[k]) for k in keys) + " |")
    return "\n".join(lines)


def write(out_dir: Path, result: dict, log: Callable[[str], None]) -> None:
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    tables = ["## Step cost (ms, best of passes)", result["step_costs"]["table"],
              "## End to end (best of rounds; per-user spread between rounds)",
              e2e_table(result["configs"], result["args"]["datasets"]),
              "## Over today's float32, speculation off",
              ratio_table(result["configs"], result["args"]["datasets"], "today-float32-plain"),
              "## Over today's float32 with n-gram + adaptive",
              ratio_table(result["configs"], result["args"]["datasets"], "today-float32-ngram"),
              "## Greedy agreement with the same mode's plain solo outputs",
              agreement_table(result["configs"], result["args"]["num_prompts"])]
    (out_dir / "table.md").write_text("\n\n".join(tables) + "\n")
    log("\n\n".join(tables))
    log(f"wrote {out_dir}")


# ------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="default: the bundled SmolLM2")
    p.add_argument("--baseline-checkout", default=None, help="serve today's float32 default from this checkout")
    p.add_argument("--datasets", default="chat,code-copy")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-level", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--passes", type=int, default=5, help="step-cost passes (best of)")
    p.add_argument("--rounds", type=int, default=2, help="end-to-end rounds (best of)")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--out-dir", required=True)


def run_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    torch.set_num_threads(1)
    args.datasets = args.datasets.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"command": shlex.join([sys.executable, "-m", "bench.dtype_sweep", *sys.argv[1:]]),
              "args": {k: v for k, v in vars(args).items() if not callable(v)}, "machine": machine_info(),
              "cpu_flags": _bf16_flags(), "load_before": os.getloadavg()}
    modes = [step_costs.Mode.parse(m) for m in step_costs.DEFAULT_MODES]
    result["step_costs"] = step_costs.run(args.model, modes, args.passes, log=log)
    log(result["step_costs"]["table"])
    baseline = Path(args.baseline_checkout) if args.baseline_checkout else None
    result["configs"] = [] if args.skip_e2e else run_rounds(configs(baseline), args, out_dir, log)
    result["load_after"] = os.getloadavg()
    write(out_dir, result, log)
    return 0


def _bf16_flags() -> dict:
    from engine.device import FAST_BF16_CPU_FLAGS, cpu_flags, cpu_has_fast_bf16

    return {"native_bf16": cpu_has_fast_bf16(), "flags": sorted(cpu_flags() & set(FAST_BF16_CPU_FLAGS)),
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dtype_sweep", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
