"""`specserve bench` and `specserve spec-sweep`: hooks for the project's CLI.

`register(subparsers)` adds both to any argparse subparsers object. When
server.cli imports this module (it lists it in COMMAND_MODULES), the
commands are also put in its registry.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def _guarded(module: str) -> tuple:
    """(add_arguments, run) from a bench module, imported lazily and defensively.

    server.cli builds every subcommand's parser on each start, `serve`
    included: a broken benchmark module must not take the server down with
    it, so an import error is reported only when the command itself runs.
    """
    def add_arguments(p: argparse.ArgumentParser) -> None:
        try:
            importlib.import_module(module).add_arguments(p)
        except Exception as exc:  # noqa: BLE001 - reported by run()
            p.set_defaults(_bench_import_error=f"{module}: {type(exc).__name__}: {exc}")

    def run(args: argparse.Namespace) -> int:
        error = getattr(args, "_bench_import_error", None)
        if error:
            print(f"specserve: cannot load {error}", file=sys.stderr)
            return 2
        return importlib.import_module(module).run_from_args(args)

    return add_arguments, run


COMMANDS = (
    ("bench", "Benchmark specserve against peers (llama-cpp-python, transformers serve)",
     *_guarded("bench.run")),
    ("spec-sweep", "Concurrency sweep of specserve under several server configurations",
     *_guarded("bench.spec_sweep")),
)


def register(subparsers) -> None:
    """Add the bench commands to an argparse `add_subparsers()` object."""
    for name, help_text, add_arguments, run in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(_run=run, func=run)


def _register_with_server_cli() -> None:
    # Import server.cli ourselves: if this module was imported first, its
    # later import of us is a cached no-op. `python -m server.cli` runs as
    # __main__, a second copy: register with that one too.
    try:
        importlib.import_module("server.cli")
    except ImportError:
        return
    for module_name in ("server.cli", "__main__"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "register_command") and hasattr(module, "Command"):
            for name, help_text, add_arguments, run in COMMANDS:
                module.register_command(module.Command(name, help_text, add_arguments, run))


_register_with_server_cli()
