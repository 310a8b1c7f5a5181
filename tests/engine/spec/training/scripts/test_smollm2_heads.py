"""engine/spec/training/scripts/smollm2-heads.sh `continue`: the
environment that chains training stages reaches train-draft's command
line (a stand-in interpreter records it instead of training)."""
from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))))
SCRIPT = os.path.join(ROOT, "engine", "spec", "training", "scripts", "smollm2-heads.sh")


def continue_arguments(tmp_path, **env: str) -> list[str]:
    recorder = tmp_path / "python"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    recorder.chmod(0o755)
    args_file, run = tmp_path / "args", tmp_path / "run"
    subprocess.run(["bash", SCRIPT, "continue", "dspark", str(run)], check=True, capture_output=True,
                   env={**os.environ, **env, "PYTHON": str(recorder), "ARGS_FILE": str(args_file)})
    return args_file.read_text().splitlines()


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_continue_defaults_to_the_committed_head_and_the_runs_data(tmp_path):
    args = continue_arguments(tmp_path)
    assert args[:3] == ["-m", "engine.spec.training.cli", "train-draft"]
    assert value(args, "--init-from") == os.path.realpath(os.path.join(ROOT, "checkpoints", "dspark-smollm2"))
    assert value(args, "--out") == str(tmp_path / "run" / "dspark-continued")
    assert value(args, "--work-dir") == str(tmp_path / "run" / "data")
    assert value(args, "--conversations") == "700" and value(args, "--train-seed") == "0"
    assert value(args, "--data") == "sharegpt:200"
    assert value(args, "--threads") == "1"  # the second core stays free for another job


def test_continue_chains_stages_on_more_data(tmp_path):
    (tmp_path / "stage2").mkdir()
    args = continue_arguments(tmp_path, INIT_FROM=str(tmp_path / "stage2"), CONTINUED_NAME="stage3",
                              TRAIN_SEED="2", CONVERSATIONS="1400", DATA_DIR=str(tmp_path / "data-c1400"),
                              TRAIN_THREADS="2", RESPONSE_DATA="sharegpt:200,sharegpt-code:400")
    assert value(args, "--init-from") == str(tmp_path / "stage2")
    assert value(args, "--out") == str(tmp_path / "run" / "stage3")
    assert value(args, "--work-dir") == str(tmp_path / "data-c1400")
    assert value(args, "--conversations") == "1400" and value(args, "--train-seed") == "2"
    assert value(args, "--threads") == "2"
    assert value(args, "--data") == "sharegpt:200,sharegpt-code:400"
