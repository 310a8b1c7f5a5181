"""The CLI hooks: register(subparsers), and `specserve bench` through server.cli."""
import argparse

from bench import cli


def test_register_adds_both_commands():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--systems", "specserve", "--concurrency", "1,2"])
    assert args.systems == "specserve" and args.concurrency == "1,2" and callable(args._run)
    args = parser.parse_args(["spec-sweep", "--config", "off=--verify-policy off"])
    assert args.config == ["off=--verify-policy off"] and callable(args._run)


def test_a_broken_module_does_not_break_the_parser():
    add_arguments, run = cli._guarded("bench.no_such_module")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([])) == 2


def test_specserve_cli_lists_bench():
    from server import cli as server_cli

    parser = server_cli.build_parser()
    args = parser.parse_args(["bench", "--dataset", "humaneval"])
    assert args.dataset == "humaneval"
