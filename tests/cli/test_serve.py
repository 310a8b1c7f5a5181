"""`specserve serve`: flags, the config they build, the serve path."""
from __future__ import annotations

import os

import argparse
import sys
import types

import pytest

from engine.config import EngineConfig
from engine.config import SpeculativeConfig
from cli import main as cli_main
from cli import serve as cli
from tests.server.fake_engine import FakeEngineClient


def _serve_args(*argv: str) -> argparse.Namespace:
    return cli_main.build_parser().parse_args(["serve", *argv])


def test_defaults_follow_the_configs():
    args = _serve_args()
    assert (args.host, args.port, args.model, args.device) == ("0.0.0.0", 8000, None, "auto")
    config = cli.engine_config_from_args(args)
    default = EngineConfig(model=None)
    assert config.scheduler == default.scheduler
    assert config.cache == default.cache
    # Speculation defaults to the measured-fastest configuration, not the record's "none".
    assert config.speculative == SpeculativeConfig(method="ngram", num_speculative_tokens=8, ngram_datastore="auto")


def test_flags_build_engine_config():
    args = _serve_args(
        "--model", "/models/x", "--served-model-name", "tiny", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "256", "--max-model-len", "1024", "--kv-cache-tokens", "1000",
        "--block-size", "32", "--dtype", "bfloat16", "--device", "cpu", "--max-waiting", "7",
        "--speculative-method", "draft-model", "--draft-model", "/models/d",
        "--num-speculative-tokens", "6", "--verify-policy", "static", "--seed", "3",
        "--ngram-min", "2", "--ngram-max", "5", "--self-draft-layers", "4")
    c = cli.engine_config_from_args(args)
    assert (c.model, c.served_model_name, c.dtype, c.device, c.seed) == (
        "/models/x", "tiny", "bfloat16", "cpu", 3)
    assert (c.scheduler.max_num_seqs, c.scheduler.max_num_batched_tokens,
            c.scheduler.max_model_len, c.scheduler.max_waiting) == (8, 256, 1024, 7)
    assert c.cache.block_size == 32 and c.cache.num_blocks == 32  # ceil(1000 / 32)
    assert (c.speculative.method, c.speculative.draft_model,
            c.speculative.num_speculative_tokens, c.speculative.policy) == (
        "draft-model", "/models/d", 6, "static")
    assert (c.speculative.ngram_min, c.speculative.ngram_max,
            c.speculative.self_draft_layers) == (2, 5, 4)


def test_the_datastore_flag_reaches_the_speculative_config():
    args = _serve_args("--model", "/models/x", "--ngram-datastore", "/stores/d.safetensors")
    assert cli.engine_config_from_args(args).speculative.ngram_datastore == "/stores/d.safetensors"
    none = _serve_args("--model", "/models/x", "--ngram-datastore", "none")
    assert cli.engine_config_from_args(none).speculative.ngram_datastore is None
    # auto is the default whatever the method: methods without n-gram ignore it
    assert cli.engine_config_from_args(_serve_args("--model", "/models/x", "--speculative-method", "self-draft")
                                       ).speculative.ngram_datastore == "auto"
    with pytest.raises(ValueError, match="ngram and hybrid only"):
        cli.engine_config_from_args(_serve_args("--model", "/models/x", "--speculative-method", "self-draft",
                                                "--ngram-datastore", "/stores/d.safetensors"))


@pytest.mark.parametrize("argv", [["--speculative-method", "magic"], ["--verify-policy", "x"],
                                  ["--dtype", "int3"], ["--port", "http"]])
def test_bad_flags_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _serve_args(*argv)
    assert info.value.code == 2


def test_inconsistent_flags_are_reported_not_raised(capsys):
    code = cli_main.main(["serve", "--model", "/m", "--device", "cpu",
                          "--speculative-method", "draft-model"])
    assert code == 2
    assert "--draft-model" in capsys.readouterr().err


def test_api_key_from_env(monkeypatch):
    monkeypatch.setenv(cli.API_KEY_ENV, "from-env")
    assert _serve_args().api_key == "from-env"
    assert _serve_args("--api-key", "flag").api_key == "flag"


def test_default_threads():
    assert cli.default_threads(1) == 1
    assert cli.default_threads(2) == 1
    assert cli.default_threads(16) == 8


class _FakeUvicorn:
    """Records what run_serve hands uvicorn; `run` calls `during_run` if set."""

    def __init__(self, calls: dict, during_run=None):
        self.calls, self.during_run = calls, during_run
        outer = self

        class Config:
            def __init__(self, app, **kw):
                calls["app"], calls["uvicorn"] = app, kw

        class Server:
            def __init__(self, config):
                self.should_exit = False

            def run(self):
                if outer.during_run:
                    outer.during_run(calls["app"])
                calls["should_exit"] = self.should_exit

        self.Config, self.Server = Config, Server


def _patch_serve(monkeypatch, fake_engine, calls, during_run=None):
    import engine.client

    def from_config(config):
        calls["config"] = config
        return fake_engine

    monkeypatch.setattr(engine.client.AsyncEngineClient, "from_config", staticmethod(from_config))
    monkeypatch.setitem(sys.modules, "uvicorn", _FakeUvicorn(calls, during_run))
    monkeypatch.setattr(cli, "_set_threads", lambda threads, device: calls.setdefault(
        "threads", (threads, device)))


def test_serve_wires_client_app_and_uvicorn(monkeypatch):
    fake, calls = FakeEngineClient(), {}
    _patch_serve(monkeypatch, fake, calls)
    code = cli_main.main(["serve", "--model", "/m", "--device", "cpu", "--port", "9123",
                          "--host", "127.0.0.1", "--api-key", "k", "--max-body-bytes", "4096",
                          "--threads", "3", "--log-level", "warning",
                          "--max-prompts-per-request", "5", "--max-choices-per-request", "9"])
    assert code == 0
    assert calls["config"].model == "/m" and calls["config"].device == "cpu"
    assert calls["threads"] == (3, "cpu")
    assert calls["uvicorn"] == {"host": "127.0.0.1", "port": 9123, "log_level": "warning",
                                "timeout_graceful_shutdown": cli.GRACEFUL_SHUTDOWN_S}
    app = calls["app"]
    assert app.state.engine is fake and app.state.api_key == "k"
    assert any(getattr(m, "kwargs", {}).get("max_bytes") == 4096 for m in app.user_middleware)
    limits = app.state.serving.validator.limits
    assert (limits.max_prompts, limits.max_choices) == (5, 9)


def test_serve_exits_1_when_the_engine_dies(monkeypatch, capsys):
    """The app's watchdog stops uvicorn when the engine dies; the exit status is 1."""
    fake, calls = FakeEngineClient(), {}

    def engine_dies_while_serving(app):
        import asyncio

        from server.app import watch_engine

        fake.dead = True
        asyncio.run(watch_engine(fake, app.state.on_engine_dead, interval_s=0.01))

    _patch_serve(monkeypatch, fake, calls, engine_dies_while_serving)
    assert cli_main.main(["serve", "--model", "/m", "--device", "cpu"]) == 1
    assert calls["should_exit"] is True
    assert "engine died" in capsys.readouterr().err


def test_choices_limit_must_fit_the_engine(capsys):
    args = _serve_args("--max-num-seqs", "4", "--max-waiting", "4",
                       "--max-choices-per-request", "9")
    with pytest.raises(ValueError, match="exceeds"):
        cli.request_limits_from_args(args)


def test_serve_defaults_to_ngram_with_the_adaptive_policy():
    c = cli.engine_config_from_args(_serve_args())
    assert (c.speculative.method, c.speculative.num_speculative_tokens, c.speculative.policy) == (
        "ngram", 8, "adaptive")
    assert c.model is None  # the embedded SmolLM2
