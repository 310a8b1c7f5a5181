"""Registers the draft-head toolkit's commands (train-draft, eval-draft)
with the `specserve` command line."""
from __future__ import annotations

from engine.spec.training.cli import add_eval_arguments, add_train_arguments, run_eval, run_train
from server.cli import Command, register_command

register_command(Command("train-draft", "train an EAGLE-3 / DFlash / DSpark draft head",
                         add_train_arguments, run_train))
register_command(Command("eval-draft", "measure a draft head's accepted length and calibration",
                         add_eval_arguments, run_eval))
