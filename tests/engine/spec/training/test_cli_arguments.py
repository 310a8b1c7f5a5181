"""engine/spec/training/cli_arguments.py: the subcommands' options parse
as cli.py reads them (the runs themselves: test_cli.py)."""
import argparse

import pytest

from engine.spec.training.cli_arguments import add_data_arguments, add_train_arguments


def test_skip_conversations_defaults_to_none_skipped_and_reads_a_count():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--method", "dspark", "--out", "x"])
    assert args.skip_conversations == 0 and args.conversations == 0
    args = parser.parse_args(["--method", "dspark", "--out", "x", "--conversations", "7", "--skip-conversations", "5"])
    assert (args.conversations, args.skip_conversations) == (7, 5)


def test_heldout_only_data_arguments_have_no_training_sets():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, heldout_only=True)
    args = parser.parse_args([])
    assert not hasattr(args, "skip_conversations") and not hasattr(args, "data")
    with pytest.raises(SystemExit):
        parser.parse_args(["--conversations", "3"])
