"""scheduler/plan.py: the token budget and a request's tentative share."""
from __future__ import annotations

from scheduler.drafts import DraftBlock
from scheduler.plan import StepPlan, TokenBudget
from scheduler.request import Request, SamplingParams


def decoding_request(drafts=()):
    request = Request("r", [1, 2, 3], SamplingParams())
    request.append_output_token(4)
    request.num_computed_tokens = 3  # in decode: only the last sampled token lacks KV
    request.drafts = DraftBlock(list(drafts), [0.5] * len(drafts))
    return request


def test_the_budget_grants_what_is_left():
    budget = TokenBudget(5)
    assert (budget.take(3), budget.take(3), budget.take(-1), budget.left) == (3, 2, 0, 0)


def test_a_decoding_request_with_drafts_can_verify_a_prefix():
    plan = StepPlan(decoding_request([7, 8, 9]), num_query_tokens=1, num_spec_tokens=2, num_lookahead_slots=4)
    assert plan.samples and plan.can_verify
    assert plan.drafts.token_ids == [7, 8]
    assert plan.num_slots == 3 + 1 + 2 + 4
    assert plan.drop_optional_slots() and plan.num_lookahead_slots == 0 and not plan.drop_optional_slots()


def test_drafts_are_capped_by_those_proposed_and_by_the_context():
    plan = StepPlan(decoding_request([7, 8, 9]), num_query_tokens=1)
    assert plan.draft_cap(5, max_model_len=100) == 3
    assert plan.draft_cap(5, max_model_len=6) == 1  # 4 tokens + 1 draft + the bonus = 6


def test_a_partial_prefill_chunk_neither_samples_nor_verifies():
    request = Request("p", [1, 2, 3, 4], SamplingParams())
    plan = StepPlan(request, num_query_tokens=2)
    assert not plan.samples and not plan.can_verify and len(plan.drafts) == 0
