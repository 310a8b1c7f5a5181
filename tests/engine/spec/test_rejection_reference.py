"""The reference acceptance loop (the oracle of rejection.py): the contract
on hand-computed cases, the target's distribution over many seeds, and the
same tokens and draws as the vectorised sampler where it is designed to.
(The large mixed-batch comparison lives in test_rejection.py.)"""
from __future__ import annotations

import pytest
import torch

from engine.sampler import make_generator
from engine.spec.rejection import rejection_sample
from engine.spec import rejection_reference as reference
from engine.spec.rejection_reference import rejection_sample_reference
from tests.engine.spec.test_rejection import chi_square, chi_square_critical

V = 4
TRIALS = 4000


def one_hot(tokens: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(tokens), V).float()


def generators(count: int, base: int = 0) -> list[torch.Generator]:
    return [make_generator(base + i) for i in range(count)]


def test_one_hot_rows_are_greedy_matching_and_draw_nothing():
    # Request 0: drafts 1, 2 match the argmax, the bonus row says 3.
    # Request 1: draft 0 against argmax 2: the argmax is emitted there.
    # Request 2: no drafts, plain greedy.
    targets = one_hot([1, 2, 3, 2, 0, 1])
    gens = generators(3)
    states = [g.get_state() for g in gens]
    result = rejection_sample_reference(torch.tensor([1, 2, 0]), None, targets, [2, 1, 0], gens)
    assert result.emitted_token_ids == [[1, 2, 3], [2], [1]]
    assert result.num_accepted == [2, 0, 0]
    assert all(torch.equal(s, g.get_state()) for s, g in zip(states, gens))


def test_a_drafter_equal_to_the_target_is_always_accepted():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25] * 4]).repeat(50, 1)
    drafts = torch.tensor([3, 0]).repeat(50)  # any tokens the drafter can draw
    verify = torch.tensor([0, 1]).repeat(50) + 3 * torch.arange(50).repeat_interleave(2)
    result = rejection_sample_reference(drafts, probs[verify], probs, [2] * 50, generators(50))
    assert result.num_accepted == [2] * 50
    assert all(e[:2] == [3, 0] for e in result.emitted_token_ids)


def test_a_draft_the_target_forbids_is_rejected_and_recovered_from_the_residual():
    # p_t = (.5, .5, 0, 0); p_d = (.5, 0, .5, 0) drew token 2: p_t(2) = 0, so
    # it is always rejected and max(0, p_t - p_d) = (0, .5, 0, 0) gives 1.
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4]).repeat(50, 1)
    draft = torch.tensor([[0.5, 0.0, 0.5, 0.0]]).repeat(50, 1)
    result = rejection_sample_reference(torch.full((50,), 2), draft, target, [1] * 50, generators(50))
    assert result.emitted_token_ids == [[1]] * 50 and result.num_accepted == [0] * 50
    # A deterministic drafter (one-hot at 2) leaves p_t itself: 0 or 1.
    result = rejection_sample_reference(torch.full((50,), 2), None, target, [1] * 50, generators(50))
    assert {e[0] for e in result.emitted_token_ids} == {0, 1} and result.num_accepted == [0] * 50


TARGET = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.3, 0.3, 0.3, 0.1]])  # verify row, bonus row
DRAFT = torch.tensor([0.4, 0.1, 0.4, 0.1])


def reference_statistics(deterministic: bool) -> list[tuple[float, float]]:
    """(chi-square, critical value) of the first and the bonus tokens of
    TRIALS one-draft requests, against the target's verify and bonus rows."""
    drafts = torch.multinomial(DRAFT, TRIALS, replacement=True, generator=make_generator(1))
    draft_probs = None if deterministic else DRAFT.expand(TRIALS, V)
    result = rejection_sample_reference(drafts, draft_probs, TARGET.repeat(TRIALS, 1), [1] * TRIALS,
                                        generators(TRIALS, base=100))
    first = torch.tensor([e[0] for e in result.emitted_token_ids])
    bonus = torch.tensor([e[1] for e in result.emitted_token_ids if len(e) == 2])
    assert 0 < len(bonus) < TRIALS  # both accepted and rejected drafts seen
    statistics = []
    for tokens, probs in ((first, TARGET[0]), (bonus, TARGET[1])):
        stat, df = chi_square(torch.bincount(tokens, minlength=V), probs)
        statistics.append((stat, chi_square_critical(df)))
    return statistics


@pytest.mark.parametrize("deterministic", [False, True], ids=["draft-probs", "deterministic-drafter"])
def test_emitted_tokens_follow_the_target(deterministic):
    (first, first_critical), (bonus, bonus_critical) = reference_statistics(deterministic)
    assert first < first_critical and bonus < bonus_critical


@pytest.mark.parametrize("hook, wrong", [("_accept", lambda u, p_t_x, p_d_x: u < p_t_x),
                                         ("_residual", lambda p_t, p_d: p_t)],
                         ids=["ignore-draft-prob", "recover-from-target"])
def test_the_check_sees_a_wrong_rule_in_the_loop(monkeypatch, hook, wrong):
    monkeypatch.setattr(reference, hook, wrong)
    (first, first_critical), _ = reference_statistics(deterministic=False)
    assert first > first_critical


def spread_batch(num_draft: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(sum(num_draft) + len(num_draft), V, generator=gen), -1)
    draft_probs = torch.softmax(torch.randn(sum(num_draft), V, generator=gen), -1)
    drafts = torch.multinomial(draft_probs, 1, generator=gen).squeeze(1) if sum(num_draft) else \
        torch.empty(0, dtype=torch.long)
    return drafts, draft_probs, probs


@pytest.mark.parametrize("num_draft", [[], [0] * 20, [3], [2, 0, 4, 1] * 10], ids=["empty", "no-drafts", "one", "mixed"])
def test_same_tokens_as_the_vectorised_sampler_with_one_shared_generator(num_draft):
    # Requests draw in batch order in both, so even one generator shared by
    # every request (as the statistical harness does) gives the same draws.
    drafts, draft_probs, probs = spread_batch(num_draft, seed=len(num_draft))
    fast_gen, slow_gen = make_generator(9), make_generator(9)
    fast = rejection_sample(drafts, draft_probs, probs, num_draft, [fast_gen] * len(num_draft))
    slow = rejection_sample_reference(drafts, draft_probs, probs, num_draft, [slow_gen] * len(num_draft))
    assert fast == slow and torch.equal(fast_gen.get_state(), slow_gen.get_state())
