"""`serve --dtype auto` and `--[no-]batch-invariant` reach the engine config."""
from cli import main as cli_main
from cli import serve


def _config(*argv):
    return serve.engine_config_from_args(cli_main.build_parser().parse_args(["serve", *argv]))


def test_defaults_are_auto_and_batch_invariant():
    config = _config()
    assert (config.dtype, config.batch_invariant) == ("auto", True)


def test_no_batch_invariant_and_explicit_dtype():
    config = _config("--no-batch-invariant", "--dtype", "bfloat16")
    assert (config.dtype, config.batch_invariant) == ("bfloat16", False)


def test_machine_counters_flag():
    assert _config().machine_counters is True
    assert _config("--no-machine-counters").machine_counters is False
