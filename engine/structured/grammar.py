"""Compiling a response_format into a grammar, once per schema.

Why xgrammar: it compiles a JSON schema into a token-level automaton with a
precomputed mask cache, so the per-token work is a bitmask fill of a few
microseconds; its GrammarMatcher accepts tokens one by one and rolls back
any number of them, which is exactly what speculative decoding needs (walk
the draft block to get every verification row's mask, then roll back the
rejected tail). vLLM and SGLang use it for the same reasons. llguidance
would also fit (lazy masks, rollback), but xgrammar's wheel installs on
CPU-only Python 3.11 with the torch we pin and is the peers' default.

What we refuse (400, naming the feature): schemas xgrammar cannot compile
(its error message names the construct), and JSON Schema keywords xgrammar
would silently ignore (`UNENFORCED_KEYWORDS`): accepting them would return
outputs that break the schema the user asked for.
"""
from __future__ import annotations

import json
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from scheduler.request import StructuredOutput

if TYPE_CHECKING:  # imported where a grammar is built: the engine imports without xgrammar (a GPU check machine)
    import xgrammar as xgr

# Keywords xgrammar 0.2 accepts but does not enforce (checked by hand).
UNENFORCED_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                       "dependencies", "uniqueItems", "contains", "minContains", "maxContains",
                       "unevaluatedItems", "propertyNames")
# The layout is fixed to json.dumps's one-line form, `{"a": 1, "b": [2, 3]}`:
# with free whitespace models (small ones especially, and vLLM users report
# it for large ones) can loop on blanks and newlines until max_tokens.
SEPARATORS = (", ", ": ")
_CONTROL = re.compile("[\x00-\x1f]")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_VALUES = ("items", "additionalProperties", "additionalItems")


class UnsupportedSchema(ValueError):
    """The schema uses something we cannot enforce; `feature` names it."""

    def __init__(self, feature: str, message: str):
        super().__init__(message)
        self.feature = feature


def check_enforceable(schema: Any, where: str = "schema") -> None:
    """Raise UnsupportedSchema for the first keyword xgrammar would ignore."""
    if not isinstance(schema, dict):
        return
    for keyword in UNENFORCED_KEYWORDS:
        if keyword in schema:
            raise UnsupportedSchema(keyword, f"JSON Schema keyword '{keyword}' (at {where}) is not "
                                             "supported in response_format")
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            check_enforceable(sub, f"{where}.{key}.{name}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            check_enforceable(sub, f"{where}.{key}[{i}]")
    for key in _SUBSCHEMA_VALUES:
        check_enforceable(schema.get(key), f"{where}.{key}")


class GrammarCompiler:
    """Compiles StructuredOutputs for one tokenizer; each distinct one once.

    Thread-safe: the server compiles off its event loop while the engine
    thread may look the same grammar up.
    """

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast  # only to describe the vocabulary

        stops = set(tokenizer.stop_token_ids) | {tokenizer.eos_token_id} - {None}
        info = xgr.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend),
                                                  vocab_size=vocab_size, stop_token_ids=sorted(stops))
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.control_tokens = _control_tokens(tokenizer, vocab_size)
        self._cache: dict[StructuredOutput, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar of `spec`; UnsupportedSchema if it cannot be enforced."""
        with self._lock:
            compiled = self._cache.get(spec)
        if compiled is None:
            # Compiled outside the lock: a long schema must not hold up the
            # engine thread looking up another (a rare double compile is harmless).
            compiled = self._compile(spec)
            with self._lock:
                self._cache[spec] = compiled
        return compiled

    def _compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        if spec.kind == "json_object":  # any object, any keys
            return self._compiler.compile_json_schema('{"type": "object"}', strict_mode=False,
                                                      any_whitespace=False, separators=SEPARATORS)
        schema, strict = json.loads(spec.schema), spec.strict
        check_enforceable(schema)
        try:
            return self._compiler.compile_json_schema(spec.schema, strict_mode=strict,
                                                      any_whitespace=False, separators=SEPARATORS)
        except (RuntimeError, ValueError) as exc:
            raise UnsupportedSchema(_short(exc), f"the schema cannot be enforced: {_short(exc)}") from exc


def _control_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """[V] bool: tokens whose text holds a raw control character (U+0000-U+001F).

    JSON never contains one outside whitespace, and our layout has no
    newlines or tabs, so they are banned wherever a grammar applies. Needed
    because xgrammar 0.2.9's length-bounded string rule (`maxLength`) admits
    them (`[^"\\\r\n]`), which would produce unparseable JSON.
    """
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    for token in range(min(vocab_size, tokenizer.vocab_size)):
        if not tokenizer.is_special(token) and _CONTROL.search(tokenizer.decode([token])):
            banned[token] = True
    return banned


def _short(exc: Exception) -> str:
    """xgrammar's message without its C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text


_COMPILERS: "weakref.WeakKeyDictionary[Any, dict[int, GrammarCompiler]]" = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compiler_for(tokenizer, vocab_size: int) -> GrammarCompiler:
    """The process's compiler for `tokenizer` (server and engine share it,
    so a grammar the server checked is compiled once)."""
    with _COMPILERS_LOCK:
        by_size = _COMPILERS.setdefault(tokenizer, {})
        if vocab_size not in by_size:
            by_size[vocab_size] = GrammarCompiler(tokenizer, vocab_size)
        return by_size[vocab_size]
