"""Compiling response_formats: one compiler per tokenizer and vocabulary,
one grammar per distinct StructuredOutput, refusals that name the
feature, the json_object grammar, and the control-character ban."""
from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from engine.structured.grammar import UNENFORCED_KEYWORDS, UnsupportedSchema, check_enforceable, compiler_for
from engine.tokenizer import Tokenizer
from scheduler.request import StructuredOutput
from tests.tiny_model import make_tiny_model_dir

VOCAB = 512
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_dir(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return compiler_for(tokenizer, VOCAB)


def accepts(compiled, text: str) -> bool:
    """Whether the grammar takes `text` as a complete document."""
    matcher = xgr.GrammarMatcher(compiled)
    return matcher.accept_string(text) and matcher.is_completed()


def test_one_compiler_per_tokenizer_and_vocabulary(tokenizer, compiler):
    assert compiler_for(tokenizer, VOCAB) is compiler
    assert compiler_for(tokenizer, VOCAB + 64) is not compiler


def test_equal_schema_texts_share_one_compiled_grammar(compiler):
    first = compiler.compile(StructuredOutput("json_schema", json.dumps(SCHEMA)))
    # A distinct but equal StructuredOutput: the cache keys on the text.
    assert compiler.compile(StructuredOutput("json_schema", json.dumps(SCHEMA))) is first
    assert compiler.compile(StructuredOutput("json_schema", json.dumps(SCHEMA), strict=True)) is not first
    assert compiler.compile(StructuredOutput("json_schema", json.dumps(SCHEMA, indent=1))) is not first


def test_a_schema_is_compiled_once(compiler, monkeypatch):
    spec = StructuredOutput("json_schema", json.dumps({"type": "array", "items": {"type": "integer"}}))
    calls = []
    real = compiler._compile
    monkeypatch.setattr(compiler, "_compile", lambda s: calls.append(s) or real(s))
    compiled = [compiler.compile(spec) for _ in range(3)]
    assert calls == [spec] and compiled[0] is compiled[1] is compiled[2]


@pytest.mark.parametrize("schema, feature", [({"not": {"type": "string"}}, "not"),
                                             ({"type": "object", "properties": {"a": {"if": {}}}}, "if"),
                                             ({"type": "array", "items": {"uniqueItems": True}}, "uniqueItems"),
                                             ({"anyOf": [{"type": "integer"}, {"contains": {}}]}, "contains")])
def test_unenforced_keywords_are_refused_by_name(compiler, schema, feature):
    with pytest.raises(UnsupportedSchema) as info:
        compiler.compile(StructuredOutput("json_schema", json.dumps(schema)))
    assert info.value.feature == feature and f"'{feature}'" in str(info.value)


def test_a_schema_xgrammar_cannot_compile_is_refused_with_its_reason(compiler):
    with pytest.raises(UnsupportedSchema) as info:
        compiler.compile(StructuredOutput("json_schema", json.dumps({"type": "strnig"})))
    assert "strnig" in info.value.feature and info.value.feature in str(info.value)


def test_every_unenforced_keyword_is_checked():
    for keyword in UNENFORCED_KEYWORDS:
        with pytest.raises(UnsupportedSchema):
            check_enforceable({"properties": {"a": {keyword: {}}}})
    check_enforceable({"type": "object", "properties": {"not_a_keyword": {"type": "string"}}})


def test_json_object_takes_any_object_in_the_one_line_layout(compiler):
    compiled = compiler.compile(StructuredOutput("json_object"))
    assert accepts(compiled, '{"a": 1, "b": [2, 3]}')
    assert accepts(compiled, '{}')
    for text in ('[1, 2]', '"text"', '42', '{"a":1}', '{"a": 1}\n'):
        assert not accepts(compiled, text), text


def test_a_schema_grammar_follows_the_schema(compiler):
    compiled = compiler.compile(StructuredOutput("json_schema", json.dumps(SCHEMA)))
    assert accepts(compiled, '{"ok": true}')
    assert not accepts(compiled, '{"ok": 1}')
    assert not accepts(compiled, '{}')


def test_control_characters_are_banned_but_special_tokens_are_not(tokenizer, compiler):
    banned = compiler.control_tokens
    assert banned.shape == (VOCAB,)
    newline = tokenizer.encode("\n")
    assert len(newline) == 1 and banned[newline[0]]
    assert not banned[tokenizer.encode("x")].any()
    assert not any(banned[t] for t in range(VOCAB) if tokenizer.is_special(t))
