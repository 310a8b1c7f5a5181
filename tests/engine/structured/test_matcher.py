"""RequestGrammar: masks of verification rows, exact roll-back of rejected
drafts, drift repair, the draft cut, and what happens after a stop token."""
from __future__ import annotations

import json

import pytest

from engine.structured.grammar import compiler_for
from engine.structured.matcher import GrammarError, RequestGrammar
from engine.tokenizer import Tokenizer
from scheduler.request import StructuredOutput
from tests.tiny_model import make_tiny_model_dir

SCHEMA = StructuredOutput("json_schema", json.dumps({"type": "object", "additionalProperties": False,
                                                     "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}))
TEXT = '{"ok": true}'
STOP = 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_dir(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def grammar(tokenizer) -> RequestGrammar:
    compiler = compiler_for(tokenizer, 512)
    return RequestGrammar(compiler.compile(SCHEMA), [STOP], 512, 4, compiler.control_tokens)


def test_masks_follow_the_drafts_and_rejected_drafts_are_rolled_back(tokenizer):
    ids = tokenizer.encode(TEXT)
    g = grammar(tokenizer)
    masks = g.verify_masks([], ids[:3])
    assert masks.shape == (4, 512)
    for j in range(4):  # row j allows the token that follows drafts 1..j
        assert masks[j, ids[j]]
    assert masks[0].sum() == 1  # only "{" can start the object
    g.commit(1, ids[1])  # draft 1 accepted, the second rejected; the target emitted ids[1] itself
    assert (g.consumed, g.ahead) == (2, 0)
    assert g.verify_masks(ids[:2], [])[0, ids[2]]


def test_sync_repairs_drift_and_stop_ends_the_grammar(tokenizer):
    ids = tokenizer.encode(TEXT)
    g = grammar(tokenizer)
    g.verify_masks([], ids[:2])  # walked ahead, then the step failed before commit
    mask = g.verify_masks(ids[:1], [])[0]  # the output has one token: back to it
    assert mask[ids[1]] and (g.consumed, g.ahead) == (1, 0)
    end = g.verify_masks(ids, [STOP])
    assert end[0].nonzero().flatten().tolist() == [STOP]  # complete: only the stop token
    assert end[1].nonzero().flatten().tolist() == [STOP]  # after it: stop tokens, never empty
    with pytest.raises(GrammarError):
        g.sync(ids + [ids[0]])


def test_the_cut_keeps_the_allowed_prefix(tokenizer):
    ids = tokenizer.encode(TEXT)
    g = grammar(tokenizer)
    bad = tokenizer.encode("x")[0]
    assert g.allowed_prefix([], ids[:3] + [bad, ids[3]]) == (3, False)
    assert g.allowed_prefix(ids, [STOP, ids[0]]) == (1, True)  # text after the stop token
    assert g.ahead == 0 and g.consumed == len(ids)


def test_drafting_walks_and_rolls_back(tokenizer):
    ids = tokenizer.encode(TEXT)
    g = grammar(tokenizer)
    g.begin_drafting([])
    assert g.advance(ids[0]) and g.allowed()[ids[1]]
    assert not g.advance(tokenizer.encode("x")[0])
    assert g.allowed().nonzero().flatten().tolist() == [STOP]  # blind past a forbidden draft
    g.end_drafting()
    assert g.ahead == 0 and g.allowed()[ids[0]]
