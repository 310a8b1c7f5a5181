"""StructuredOutputs: which requests get a grammar and where it may stop,
the draft cut (truncate at the first forbidden draft, count what was cut,
refuse a cut that would bias sampling), and commit/forget bookkeeping."""
from __future__ import annotations

import json

import pytest
import torch

from engine.structured.matcher import GrammarError
from engine.structured.outputs import StructuredOutputs
from engine.tokenizer import Tokenizer
from scheduler.drafts import DraftBlock
from scheduler.request import Request, SamplingParams, StructuredOutput
from tests.tiny_model import make_tiny_model_dir

VOCAB = 512
SCHEMA = StructuredOutput("json_schema", json.dumps({"type": "object", "additionalProperties": False,
                                                     "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}))
TEXT = '{"ok": true}'
STOP = 2  # the tiny tokenizer's <|im_end|>


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_dir(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def outputs(tokenizer):
    return StructuredOutputs(tokenizer, VOCAB, max_draft=4)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return tokenizer.encode(TEXT)


@pytest.fixture(scope="module")
def bad(tokenizer):
    return tokenizer.encode("x")[0]  # no JSON object starts or continues with it here


def request(rid: str, structured=SCHEMA, **params) -> Request:
    params = {"temperature": 0.0} | params
    return Request(rid, [5, 6], SamplingParams(structured=structured, **params), eos_token_id=STOP)


def block(tokens: list[int], probs: torch.Tensor | None = None) -> DraftBlock:
    return DraftBlock(list(tokens), [0.5] * len(tokens), probs, source="test")


def spread(count: int) -> torch.Tensor:
    return torch.full((count, VOCAB), 1.0 / VOCAB)


def test_only_constrained_requests_get_a_grammar(outputs):
    plain, constrained = request("plain", structured=None), request("json")
    outputs.add(plain)
    outputs.add(constrained)
    assert outputs.get(plain) is None and outputs.get(constrained) is not None
    assert outputs.verify_masks(plain, [7]) is None
    outputs.commit(plain, [7], 0)  # nothing to do, and no error


def test_the_grammar_stops_on_the_tokenizer_request_and_eos_stop_tokens(outputs, tokenizer):
    r = Request("r", [5], SamplingParams(structured=SCHEMA, stop_token_ids=(9,)), eos_token_id=7)
    outputs.add(r)
    stops = outputs.get(r).stop_mask.nonzero().flatten().tolist()
    assert stops == sorted(tokenizer.stop_token_ids | {7, 9})


def test_a_block_is_cut_at_its_first_forbidden_draft_and_counted(outputs, ids, bad):
    r = request("r")
    outputs.add(r)
    proposals = {"r": block(ids[:3] + [bad, ids[3]])}
    cut = outputs.cut_drafts(proposals, {"r": r})
    assert cut["r"].token_ids == ids[:3] and cut["r"].source == "test"
    assert outputs.num_cut_draft_tokens == 2
    assert outputs.get(r).ahead == 0 and outputs.get(r).consumed == 0  # the cut walked and came back


def test_allowed_blocks_and_unconstrained_requests_are_left_alone(outputs, ids, bad):
    constrained, plain = request("json"), request("plain", structured=None)
    outputs.add(constrained)
    outputs.add(plain)
    allowed, free = block(ids[:4]), block([bad, bad])
    cut = outputs.cut_drafts({"json": allowed, "plain": free}, {"json": constrained, "plain": plain})
    assert cut["json"] is allowed and cut["plain"] is free
    assert outputs.num_cut_draft_tokens == 0


def test_no_grammar_at_all_returns_the_proposals_themselves(outputs, bad):
    proposals = {"plain": block([bad])}
    assert outputs.cut_drafts(proposals, {"plain": request("plain", structured=None)}) is proposals


def test_the_cut_starts_from_the_requests_output(outputs, ids, bad):
    r = request("r")
    outputs.add(r)
    r.output_token_ids = ids[:2]
    cut = outputs.cut_drafts({"r": block([ids[2], bad])}, {"r": r})
    assert cut["r"].token_ids == [ids[2]] and outputs.num_cut_draft_tokens == 1


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}],
                         ids=["greedy", "seeded"])
def test_cutting_a_spread_draft_is_exact_for_greedy_and_seeded_requests(outputs, ids, bad, params):
    r = request("r", **params)
    outputs.add(r)
    cut = outputs.cut_drafts({"r": block([ids[0], bad], spread(2))}, {"r": r})
    assert cut["r"].token_ids == [ids[0]] and cut["r"].probs.shape == (1, VOCAB)


def test_cutting_a_sampled_spread_draft_fails_loudly(outputs, ids, bad):
    r = request("r", temperature=1.0)
    outputs.add(r)
    with pytest.raises(GrammarError, match="would bias sampling"):
        outputs.cut_drafts({"r": block([ids[0], bad], spread(2))}, {"r": r})
    # A deterministic drafter's forbidden draft is cut even when sampling.
    assert outputs.cut_drafts({"r": block([ids[0], bad])}, {"r": r})["r"].token_ids == [ids[0]]


def test_drafts_after_a_drafted_stop_token_are_cut_for_any_request(outputs, ids):
    r = request("r", temperature=1.0)
    outputs.add(r)
    r.output_token_ids = list(ids)
    cut = outputs.cut_drafts({"r": block([STOP, ids[0]], spread(2))}, {"r": r})
    assert cut["r"].token_ids == [STOP] and outputs.num_cut_draft_tokens == 1


def test_commit_keeps_the_accepted_drafts_and_the_emitted_token(outputs, ids):
    r = request("r")
    outputs.add(r)
    masks = outputs.verify_masks(r, ids[:3])
    assert masks.shape == (4, VOCAB) and masks[3, ids[3]]
    outputs.commit(r, ids[:2], num_accepted=1)  # the second draft rejected; the target emitted ids[1]
    r.output_token_ids = ids[:2]
    grammar = outputs.get(r)
    assert (grammar.consumed, grammar.ahead) == (2, 0)
    assert outputs.verify_masks(r, [])[0, ids[2]]


def test_forget_drops_the_grammar_and_tolerates_unknown_requests(outputs, ids, bad):
    r = request("r")
    outputs.add(r)
    outputs.forget("r")
    outputs.forget("never-added")
    assert outputs.get(r) is None and outputs.grammars == {}
    proposals = {"r": block([bad])}
    assert outputs.cut_drafts(proposals, {"r": r}) is proposals  # no grammar left to cut with
