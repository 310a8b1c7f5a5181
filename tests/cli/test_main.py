"""The `specserve` entry point composes serve, bench and toolkit commands."""
from __future__ import annotations

import os
import subprocess
import sys

from cli.main import COMMANDS, Command, build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_room_contributes_its_commands():
    parser = build_parser()
    args = parser.parse_args(["bench", "--systems", "specserve", "--concurrency", "1,2"])
    assert args.systems == "specserve" and args.concurrency == "1,2" and callable(args._run)
    args = parser.parse_args(["spec-sweep", "--config", "off=--verify-policy off"])
    assert args.config == ["off=--verify-policy off"]
    args = parser.parse_args(["train-draft", "--method", "dspark", "--out", "x"])
    assert args.method == "dspark"
    assert parser.parse_args(["eval-draft", "--draft-model", "d"]).draft_model == "d"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_a_broken_command_is_reported_only_when_run(capsys):
    commands = COMMANDS + (Command("broken", "x", "bench.no_such_module"),)
    assert build_parser(commands).parse_args(["serve", "--port", "9000"]).port == 9000
    assert main(["broken"], commands) == 2
    assert "no_such_module" in capsys.readouterr().err


def test_python_m_cli_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    for command in ("serve", "bench", "spec-sweep", "train-draft", "eval-draft"):
        assert command in out.stdout, out.stdout + out.stderr


def test_python_m_cli_main_runs_the_cli_too():
    """`python -m cli.main` used to import the module and exit 0 without
    doing anything; it is the CLI, like `python -m cli`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cli.main", "build-datastore", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--generate-from" in done.stdout
