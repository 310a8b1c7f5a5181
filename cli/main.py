"""The `specserve` entry point: one parser, one subcommand per Command.

Commands are declared here by module and function names and imported when
the parser is built; a command whose module fails to import is reported when
that command runs, so a half-written benchmark never takes `serve` down.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, and where its flags and runner live."""

    name: str
    help: str
    module: str
    add_arguments: str = "add_arguments"  # function(parser) in `module`
    run: str = "run_from_args"  # function(args) -> exit code in `module`


COMMANDS: tuple[Command, ...] = (
    Command("serve", "Run the OpenAI-compatible HTTP server", "cli.serve", "add_serve_arguments",
            "run_serve"),
    Command("bench", "Benchmark specserve against peers (llama-cpp-python, transformers serve)",
            "bench.run"),
    Command("soak", "N streams for M minutes with disconnects: errors, RSS, KV at the end",
            "bench.soak"),
    Command("spec-sweep", "Concurrency sweep of specserve under several server configurations",
            "bench.spec_sweep"),
    Command("train-draft", "Train an EAGLE-3 / DFlash / DSpark draft head",
            "engine.spec.training.cli", "add_train_arguments", "run_train"),
    Command("build-datastore", "Build the corpus datastore n-gram drafts from beside prompt lookup",
            "engine.spec.training.datastore_cli"),
    Command("eval-draft", "Measure a draft head's accepted length and calibration",
            "engine.spec.training.cli", "add_eval_arguments", "run_eval"),
)


def _add_command(subparsers, command: Command) -> None:
    sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
    try:
        module = importlib.import_module(command.module)
        getattr(module, command.add_arguments)(sub)
        sub.set_defaults(_run=getattr(module, command.run))
    except Exception as exc:  # noqa: BLE001 - reported only if this command is run
        sub.set_defaults(_run=_unavailable(command.name, exc))


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"specserve {name}: unavailable: {exc!r}", file=sys.stderr)
        return 2

    return run


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        _add_command(subparsers, command)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # `python -m cli.main` must not import and exit silently
    sys.exit(main())
