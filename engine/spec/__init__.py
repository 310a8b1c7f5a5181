"""Speculative decoding: drafters behind one interface (base.py), the
registry of speculative methods (registry.py) and rejection sampling.

Importing this package registers the built-in drafters; a new drafter is a
new module that calls `register_drafter` plus one import line here.
"""
from engine.spec import draft_model, head_drafter, ngram  # noqa: F401  (registers)
