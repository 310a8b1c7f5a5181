"""The built-in drafters: importing this module registers them. A new
drafter is a new module that calls `register_drafter` plus one import here."""
from engine.spec import draft_model, head_drafter, hybrid, ngram  # noqa: F401  (registers)
