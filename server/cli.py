"""The `specserve` command line.

Subcommands live in a small registry so that other parts of the project
(benchmarks, draft training) can add theirs without touching `serve`: a
module listed in COMMAND_MODULES calls `register_command` when imported.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from engine.config import (
    SPEC_METHODS,
    VERIFY_POLICIES,
    CacheConfig,
    EngineConfig,
    SchedulerConfig,
    SpeculativeConfig,
)

API_KEY_ENV = "SPECSERVE_API_KEY"
SERVE_DEFAULT_METHOD = "ngram"
SERVE_DEFAULT_NUM_SPECULATIVE = 8
DEFAULT_PORT = 8000
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, flag declarations and runner."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}

# Imported (when present) before parsing; each registers its own commands.
COMMAND_MODULES: tuple[str, ...] = ("bench.cli", "engine.spec.cli")  # bench, spec-sweep; train-draft, eval-draft


def register_command(command: Command) -> Command:
    """Add a subcommand; the last registration of a name wins."""
    COMMANDS[command.name] = command
    return command


def _load_command_modules() -> None:
    # A broken optional module must not take `serve` down with it.
    for name in COMMAND_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except ModuleNotFoundError:  # its parent package is absent
            continue
        except Exception as exc:  # noqa: BLE001 - reported, then ignored
            print(f"specserve: skipping commands from {name}: {exc!r}", file=sys.stderr)


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"specserve {name}: unavailable: {exc!r}", file=sys.stderr)
        return 2

    return run


# ------------------------------------------------------------------ serve


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Declare every `serve` flag; defaults come from the config dataclasses."""
    _add_model_flags(p.add_argument_group("model"))
    _add_batching_flags(p.add_argument_group("batching and memory"))
    _add_speculative_flags(p.add_argument_group("speculative decoding"))
    _add_http_flags(p.add_argument_group("HTTP"))


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default=None,
                   help="HF model directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    g.add_argument("--served-model-name", default=None,
                   help="name clients pass as `model` (default: the model's file/dir name)")
    g.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bfloat16 on CPUs with AMX/AVX512-BF16 and on CUDA, else float32")
    g.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                   help="bitwise batch-independent logits, so speculation stays lossless in bf16")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: half the cores, at least 1; "
                        "oversubscribed cores make decoding collapse)")
    g.add_argument("--seed", type=int, default=0)


def _add_batching_flags(g: argparse._ArgumentGroup) -> None:
    sched, cache = SchedulerConfig(), CacheConfig()
    g.add_argument("--max-num-seqs", type=int, default=sched.max_num_seqs)
    g.add_argument("--max-num-batched-tokens", type=int, default=sched.max_num_batched_tokens)
    g.add_argument("--max-model-len", type=int, default=sched.max_model_len)
    g.add_argument("--max-waiting", type=int, default=sched.max_waiting,
                   help="waiting-queue length beyond which requests get 429")
    g.add_argument("--block-size", type=int, default=cache.block_size)
    g.add_argument("--kv-cache-tokens", type=int, default=None,
                   help=f"KV cache capacity in tokens (default: {cache.num_tokens})")


def _add_speculative_flags(g: argparse._ArgumentGroup) -> None:
    spec = SpeculativeConfig()
    # Defaults: the fastest lossless configuration measured on the CPU machine
    # (README, "Load-aware verification"): n-gram drafts, up to 8, adaptive.
    g.add_argument("--speculative-method", default=SERVE_DEFAULT_METHOD, choices=SPEC_METHODS)
    g.add_argument("--num-speculative-tokens", type=int, default=SERVE_DEFAULT_NUM_SPECULATIVE)
    g.add_argument("--draft-model", default=None, help="draft model path (draft-model method)")
    g.add_argument("--verify-policy", default=spec.policy, choices=VERIFY_POLICIES,
                   help="off: no speculation; static: fixed draft length; "
                        "adaptive*: draft and verification lengths from load and confidence")
    g.add_argument("--ngram-min", type=int, default=spec.ngram_min)
    g.add_argument("--ngram-max", type=int, default=spec.ngram_max)
    g.add_argument("--self-draft-layers", type=int, default=spec.self_draft_layers,
                   help="layers of the target used as its own drafter (0: a third)")


def _add_http_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--host", default="0.0.0.0")
    g.add_argument("--port", type=int, default=DEFAULT_PORT)
    g.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY` on /v1 (env {API_KEY_ENV})")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20)
    g.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Build the engine config; raises ValueError for inconsistent flags."""
    block_size = args.block_size
    cache = CacheConfig(block_size=block_size) if args.kv_cache_tokens is None else CacheConfig(
        block_size=block_size, num_blocks=max(1, math.ceil(args.kv_cache_tokens / block_size)))
    scheduler = SchedulerConfig(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, max_waiting=args.max_waiting)
    speculative = SpeculativeConfig(
        method=args.speculative_method, num_speculative_tokens=args.num_speculative_tokens,
        draft_model=args.draft_model, policy=args.verify_policy, ngram_min=args.ngram_min,
        ngram_max=args.ngram_max, self_draft_layers=args.self_draft_layers)
    return EngineConfig(model=args.model, dtype=args.dtype, device=args.device, cache=cache,
                        scheduler=scheduler, speculative=speculative,
                        served_model_name=args.served_model_name, seed=args.seed,
                        batch_invariant=args.batch_invariant)


def _resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    from engine.models.default import default_model_path

    return default_model_path()  # DefaultModelMissing says how to install it


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_threads(cpu_count: int | None = None) -> int:
    """Half the logical cores (about the physical ones), at least one."""
    return max(1, (cpu_count or os.cpu_count() or 1) // 2)


def _set_threads(threads: int | None, device: str) -> None:
    import torch

    if threads is None and device.startswith("cpu"):
        threads = default_threads()
    if threads is not None:
        torch.set_num_threads(threads)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=args.log_level.upper() if args.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.model = _resolve_model(args.model)
        args.device = _resolve_device(args.device)
        config = engine_config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"specserve serve: error: {exc}", file=sys.stderr)
        return 2
    _set_threads(args.threads, config.device)

    from engine.client import AsyncEngineClient
    from server.app import create_app

    client = AsyncEngineClient.from_config(config)
    app = create_app(client, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


register_command(Command("serve", "Run the OpenAI-compatible HTTP server",
                         add_serve_arguments, run_serve))


# ------------------------------------------------------------------ entry


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="specserve", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        try:
            command.add_arguments(sub)
        except Exception as exc:  # noqa: BLE001 - fails only if that command is run
            sub.set_defaults(_run=_unavailable(command.name, exc))
            continue
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    # Run the imported module's main, so that commands registered by other
    # modules (into `server.cli`, not `__main__`) are seen under `python -m`.
    from server.cli import main as imported_main

    sys.exit(imported_main())
