"""`specserve serve`: flags -> EngineConfig -> engine client -> app -> uvicorn."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.spec.registry import method_names
from scheduler.policies import policy_names

API_KEY_ENV = "SPECSERVE_API_KEY"
SERVE_DEFAULT_METHOD = "ngram"
SERVE_DEFAULT_NUM_SPECULATIVE = 8
DEFAULT_PORT = 8000
DTYPES = ("float32", "float16", "bfloat16", "float64")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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
    g.add_argument("--dtype", default="float32", choices=DTYPES)
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
    g.add_argument("--speculative-method", default=SERVE_DEFAULT_METHOD, choices=method_names())
    g.add_argument("--num-speculative-tokens", type=int, default=SERVE_DEFAULT_NUM_SPECULATIVE)
    g.add_argument("--draft-model", default=None, help="draft model path (draft-model method)")
    g.add_argument("--verify-policy", default=spec.policy, choices=policy_names(),
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
                        served_model_name=args.served_model_name, seed=args.seed)


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
