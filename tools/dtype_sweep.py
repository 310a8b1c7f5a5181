"""bfloat16 against float32, batch-invariant or not, in one run.

1. Step costs in process (tools.step_costs): SPS(B) and verification of k
   drafts against a one-token step, for every dtype/kernel mode.
2. End to end over HTTP: each server configuration (dtype, kernel mode,
   speculation off or n-gram + adaptive) serves the chat and code-copy
   prompt sets at concurrency 1 and 8 with the load generator.
   Besides wall-clock tok/s, each level records the server process's CPU
   seconds (/proc): tokens per CPU second is what an idle core would give,
   the figure to compare on a machine other jobs are loading.
3. Greedy agreement: the same prompts once more, one at a time and eight at
   once; each output is compared with its dtype/mode's plain output one at a
   time (speculation and batching must not change a token).

A baseline checkout (`--baseline-checkout /work/main`) adds today's float32
default served from that code, so the new default is measured against it in
the same run. One torch thread everywhere.

    python -m tools.dtype_sweep --baseline-checkout /work/main --out-dir bench/results/DATE-bf16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import httpx
import torch

from tools import step_costs
from bench.datasets import load_prompts
from bench.dtype_report import agreement_table, e2e_table, ratio_table
from bench.loadgen import LoadConfig, Target, describe_level, new_client, run_concurrency, warm_up
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
            this_round["levels"][dataset] = asyncio.run(
                measure_levels(server, target, prompts, args.concurrency, load, log))
            if f"{dataset}@1" in record["texts"]:
                continue  # the greedy texts are taken in the first round only
            for c in (1, 8):
                record["texts"][f"{dataset}@{c}"] = asyncio.run(
                    greedy_texts(server.base_url, prompts, args.max_tokens, c))
    this_round["load_after"] = os.getloadavg()
    return this_round


async def measure_levels(server: ServerProcess, target: Target, prompts, levels: Sequence[int],
                         load: LoadConfig, log: Callable[[str], None]) -> list[dict]:
    """Warm up, then each concurrency level (at least two requests per user)
    with the server's CPU seconds spent on it."""
    async with new_client(load, max(levels) * 2) as client:
        await warm_up(client, target, prompts, load)
        out, first_prompt = [], 0
        for concurrency in levels:
            level_load = replace(load, num_requests=max(load.num_requests, 2 * concurrency))
            before = process_cpu_seconds(server.process.pid)
            level = await run_concurrency(client, target, prompts, concurrency, level_load,
                                          first_prompt=first_prompt)
            record = level_record(level)
            record["server_cpu_s"] = process_cpu_seconds(server.process.pid) - before
            record["tokens_per_cpu_s"] = record["output_tokens"] / max(record["server_cpu_s"], 1e-9)
            first_prompt += level_load.num_requests
            log(f"[{target.name}] {describe_level(level)}  tok/CPU-s={record['tokens_per_cpu_s']:.1f}")
            out.append(record)
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------ reports


def write(out_dir: Path, result: dict, log: Callable[[str], None]) -> None:
    """results.json without per-request records (those go to raw/, git-ignored), table.md."""
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    (out_dir / "raw" / "results-full.json").write_text(json.dumps(result, indent=1))
    (out_dir / "results.json").write_text(json.dumps(without_requests(result), indent=1))
    tables = ["## Step cost: thread CPU ms, best of passes (ratio to the one-token step)",
              result["step_costs"]["table"],
              "## Step cost: wall ms, best of passes", result["step_costs"]["wall_table"],
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


def without_requests(result: dict) -> dict:
    """A copy whose levels keep their summaries but not every request."""
    slim = json.loads(json.dumps(result))
    for config in slim.get("configs", []):
        for rnd in config["rounds"]:
            for levels in rnd["levels"].values():
                for level in levels:
                    level.pop("requests", None)
    return slim


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
    result = {"command": shlex.join([sys.executable, "-m", "tools.dtype_sweep", *sys.argv[1:]]),
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
    p = argparse.ArgumentParser(prog="python -m tools.dtype_sweep", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
