"""engine/spec/builtin.py: importing it registers every built-in method."""
from __future__ import annotations

import engine.spec.builtin  # noqa: F401
from engine.spec.registry import DRAFTERS


def test_the_builtin_methods_are_registered():
    assert {"ngram", "draft-model", "self-draft", "eagle3", "dflash", "dspark"} <= set(DRAFTERS)
