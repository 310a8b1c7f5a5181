"""`specserve serve`: flags -> EngineConfig -> engine client -> app -> uvicorn.

The process exits with status 1 when the engine dies (an error it cannot
attribute to one request), after failing the requests in flight, so that
Kubernetes, compose's `restart:` policy or systemd restart it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading

from engine.config import DATASTORE_AUTO, CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.spec.registry import method_names
from scheduler.policies import policy_names
from server.limits import RequestLimits
from server.protocol import (
    MAX_LOGPROBS,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
)
from server.validation import MIN_SAMPLING_TEMPERATURE

API_KEY_ENV = "SPECSERVE_API_KEY"
METRICS_API_KEY_ENV = "SPECSERVE_METRICS_API_KEY"
GRACEFUL_SHUTDOWN_S = 5  # after the engine died: open streams already got their error
SERVE_DEFAULT_METHOD = "ngram"
SERVE_DEFAULT_NUM_SPECULATIVE = 8
# n-gram reads the bundled corpus datastore of the served tokenizer beside
# prompt lookup (docs/draft-heads.md, "Phase 9"), drafting whichever block
# promises more accepted drafts by the datastore's fitted map ("Phase 12").
SERVE_DEFAULT_DATASTORE = DATASTORE_AUTO
DEFAULT_PORT = 8000
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Declare every `serve` flag; defaults come from the config dataclasses."""
    _add_model_flags(p.add_argument_group("model"))
    _add_batching_flags(p.add_argument_group("batching and memory"))
    _add_speculative_flags(p.add_argument_group("speculative decoding"))
    _add_http_flags(p.add_argument_group("HTTP"))
    _add_limit_flags(p.add_argument_group("request limits", _FIXED_LIMITS))


_FIXED_LIMITS = (
    f"Fixed (OpenAI's where OpenAI has them): n <= {MAX_N}, temperature in [0, 2] "
    f"(below {MIN_SAMPLING_TEMPERATURE:g} it is greedy), top_p in (0, 1], presence and "
    f"frequency penalties in [-2, 2], repetition_penalty in (0, {MAX_REPETITION_PENALTY:g}], "
    f"min_p in [0, 1], seed a 64-bit signed int, up to {MAX_STOP_STRINGS} stop strings of "
    f"1-{MAX_STOP_STRING_CHARS} characters, up to {MAX_STOP_TOKEN_IDS} stop_token_ids, "
    f"logprobs/top_logprobs <= {MAX_LOGPROBS}. Unimplemented OpenAI fields (logit_bias, "
    "response_format, tools, ...) get a 400 naming them.")


def _add_model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", default=None,
                   help="HF model directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    g.add_argument("--served-model-name", default=None,
                   help="name clients pass as `model` (default: the model's file/dir name)")
    g.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bfloat16 on CPUs with AMX/AVX512-BF16 and on CUDA, else float32")
    g.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                   help="bitwise batch-independent logits, so speculation stays lossless in bf16")
    g.add_argument("--machine-counters", action=argparse.BooleanOptionalAction, default=True,
                   help="let the verification policy price other processes' load (NVML on CUDA, "
                        "run-queue wait on CPU); off for benchmarks on a shared machine")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay decode and verification steps from CUDA graphs (default: on for CUDA)")
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
                   help="requests that may wait beyond a full batch (--max-num-seqs); "
                        "more in flight at once get 429")
    g.add_argument("--block-size", type=int, default=cache.block_size)
    g.add_argument("--kv-cache-tokens", type=int, default=None,
                   help=f"KV cache capacity in tokens (default: {cache.num_tokens})")


def _add_speculative_flags(g: argparse._ArgumentGroup) -> None:
    spec = SpeculativeConfig()
    # Defaults: the fastest lossless configuration measured on the CPU machine
    # (README, "Load-aware verification", "n-gram with the corpus datastore"):
    # n-gram drafts (prompt lookup's block or the bundled datastore's,
    # whichever promises more), up to 8, adaptive.
    g.add_argument("--speculative-method", default=SERVE_DEFAULT_METHOD, choices=method_names())
    g.add_argument("--num-speculative-tokens", type=int, default=SERVE_DEFAULT_NUM_SPECULATIVE)
    g.add_argument("--draft-model", default=None, help="draft model path (draft-model method)")
    g.add_argument("--verify-policy", default=spec.policy, choices=policy_names(),
                   help="off: no speculation; static: fixed draft length; "
                        "adaptive*: draft and verification lengths from load and confidence")
    g.add_argument("--ngram-min", type=int, default=spec.ngram_min)
    g.add_argument("--ngram-max", type=int, default=spec.ngram_max)
    g.add_argument("--ngram-datastore", default=SERVE_DEFAULT_DATASTORE, metavar="PATH|auto|none",
                   help="a corpus datastore (specserve build-datastore) that ngram and hybrid draft from "
                        "where prompt lookup finds no match; auto: the bundled one built over the model's "
                        "tokenizer, if any")
    g.add_argument("--ngram-alternatives", action=argparse.BooleanOptionalAction,
                   default=spec.ngram_alternatives,
                   help="greedy token trees: verify the datastore's and prompt lookup's blocks side by side "
                        "where they start differently (ngram with a datastore)")
    g.add_argument("--self-draft-layers", type=int, default=spec.self_draft_layers,
                   help="layers of the target used as its own drafter (0: a third)")


def _add_http_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--host", default="0.0.0.0")
    g.add_argument("--port", type=int, default=DEFAULT_PORT)
    g.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY` on /v1 (env {API_KEY_ENV})")
    g.add_argument("--metrics-api-key", default=os.environ.get(METRICS_API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY` on /metrics "
                        f"(env {METRICS_API_KEY_ENV}; default: /metrics is open)")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="larger request bodies get 413 before they are parsed")
    g.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _add_limit_flags(g: argparse._ArgumentGroup) -> None:
    limits = RequestLimits()
    g.add_argument("--max-prompts-per-request", type=int, default=limits.max_prompts,
                   help="prompts in one completions request (a list of prompts)")
    g.add_argument("--max-choices-per-request", type=int, default=limits.max_choices,
                   help="engine requests one HTTP request may fan out to (prompts x n); "
                        "at most --max-num-seqs + --max-waiting")


def request_limits_from_args(args: argparse.Namespace) -> RequestLimits:
    """The per-request limits; ValueError if one request could never be admitted."""
    limits = RequestLimits(max_prompts=args.max_prompts_per_request,
                           max_choices=args.max_choices_per_request)
    capacity = args.max_num_seqs + args.max_waiting
    if limits.max_choices > capacity:
        raise ValueError(f"--max-choices-per-request {limits.max_choices} exceeds what the "
                         f"engine admits at once (--max-num-seqs + --max-waiting = {capacity})")
    return limits


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
        ngram_max=args.ngram_max, self_draft_layers=args.self_draft_layers,
        ngram_datastore=None if args.ngram_datastore == "none" else args.ngram_datastore,
        ngram_alternatives=args.ngram_alternatives)
    return EngineConfig(model=args.model, dtype=args.dtype, device=args.device, cache=cache,
                        scheduler=scheduler, speculative=speculative,
                        served_model_name=args.served_model_name, seed=args.seed,
                        batch_invariant=args.batch_invariant, cuda_graphs=args.cuda_graphs,
                        machine_counters=args.machine_counters)


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
        limits = request_limits_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"specserve serve: error: {exc}", file=sys.stderr)
        return 2
    _set_threads(args.threads, config.device)

    from engine.client import AsyncEngineClient
    from server.app import create_app

    client = AsyncEngineClient.from_config(config)
    engine_died = threading.Event()

    def stop_server() -> None:  # called by the app's watchdog, on the event loop
        engine_died.set()
        server.should_exit = True

    app = create_app(client, api_key=args.api_key, metrics_api_key=args.metrics_api_key,
                     max_body_bytes=args.max_body_bytes, limits=limits,
                     on_engine_dead=stop_server)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    try:
        server.run()
    except KeyboardInterrupt:  # SIGINT: a clean stop, as uvicorn.run treats it
        pass
    if engine_died.is_set():
        print("specserve serve: the inference engine died; exiting with status 1 so that "
              "the supervisor restarts the server", file=sys.stderr)
        return 1
    return 0
