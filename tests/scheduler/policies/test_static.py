"""scheduler/policies/static.py: a fixed k, first come first served."""
from __future__ import annotations

from scheduler.drafts import DraftBlock
from scheduler.policies.base import PolicyContext
from scheduler.policies.registry import build_policy
from scheduler.policies.static import StaticPolicy, VerifyAllPolicy
from scheduler.request import Request, SamplingParams


def with_drafts(rid, n):
    request = Request(rid, [1], SamplingParams())
    request.drafts = DraftBlock(list(range(n)), [0.01] * n)  # confidences are ignored
    return request


def test_k_drafts_each_while_the_budget_lasts():
    policy = StaticPolicy(k=3)
    lengths = policy.choose_lengths([with_drafts("a", 5), with_drafts("b", 2), with_drafts("c", 4)], budget_left=6)
    assert lengths == {"a": 3, "b": 2, "c": 1}
    assert policy.stats().verify_length_counts[:4] == [0, 1, 1, 1]


def test_verify_all_takes_every_draft_and_drafting_is_never_paused():
    policy = VerifyAllPolicy()
    assert policy.choose_lengths([with_drafts("a", 7)], budget_left=10) == {"a": 7}
    assert policy.should_draft("a") and policy.draft_length("a", 5) == 5
    assert StaticPolicy(k=2).draft_length("a", 5) == 2


def test_built_by_name_with_the_configured_k():
    policy = build_policy("static", PolicyContext(max_draft=4, max_batched_tokens=64))
    assert isinstance(policy, StaticPolicy) and policy.k == 4
