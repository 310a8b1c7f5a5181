"""Sampling transforms against hand computations on tiny vocabularies."""
import math

import pytest
import torch

from engine.sampler import RowContext, compute_logprobs, make_generator, target_probs
from scheduler.request import SamplingParams


def ctx(prompt=(0,), output=(), **params) -> RowContext:
    return RowContext(SamplingParams(**params), list(prompt), list(output))


def probs_of(logits: list[float], **params) -> list[float]:
    """target_probs of one row with empty history."""
    return target_probs(torch.tensor([logits]), [ctx(**params)])[0].tolist()


def log_list(probs: list[float]) -> list[float]:
    return [math.log(p) for p in probs]


def normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def softmax(logits: list[float]) -> list[float]:
    return normalised([math.exp(x) for x in logits])


DESCENDING = log_list([0.4, 0.3, 0.2, 0.1])


def test_plain_row_is_softmax():
    assert probs_of([1.0, 2.0, 3.0]) == pytest.approx(softmax([1.0, 2.0, 3.0]), abs=1e-6)


def test_temperature_scales_logits():
    assert probs_of([1.0, 2.0, 3.0], temperature=0.5) == pytest.approx(softmax([2.0, 4.0, 6.0]), abs=1e-6)
    assert probs_of([1.0, 2.0, 3.0], temperature=2.0) == pytest.approx(softmax([0.5, 1.0, 1.5]), abs=1e-6)


def test_top_k_keeps_k_best():
    assert probs_of(DESCENDING, top_k=2) == pytest.approx([4 / 7, 3 / 7, 0, 0], abs=1e-6)


def test_top_k_keeps_ties_at_the_boundary():
    # Tokens 1 and 2 tie for second place: both stay, independent of sort order.
    expected = normalised([0.4, 0.2, 0.2, 0])
    assert probs_of(log_list([0.4, 0.2, 0.2, 0.1]), top_k=2) == pytest.approx(expected, abs=1e-6)


def test_top_k_at_least_vocab_is_a_no_op():
    assert probs_of(DESCENDING, top_k=10) == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=1e-6)


@pytest.mark.parametrize("top_p, expected", [
    (0.35, [1, 0, 0, 0]),                  # the first token alone reaches 0.35
    (0.6, [4 / 7, 3 / 7, 0, 0]),           # 0.4 < 0.6, 0.4 + 0.3 >= 0.6
    (0.75, [4 / 9, 3 / 9, 2 / 9, 0]),      # 0.7 < 0.75 needs a third token
    (0.95, [0.4, 0.3, 0.2, 0.1]),
])
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, expected):
    assert probs_of(DESCENDING, top_p=top_p) == pytest.approx(expected, abs=1e-6)


def test_top_p_keeps_ties_at_the_boundary():
    ties = log_list([0.4, 0.2, 0.2, 0.2])
    # A second token is needed; all three candidates tie, so all stay.
    assert probs_of(ties, top_p=0.5) == pytest.approx([0.4, 0.2, 0.2, 0.2], abs=1e-6)
    assert probs_of(ties, top_p=0.3) == pytest.approx([1, 0, 0, 0], abs=1e-6)


def test_top_p_applies_to_the_top_k_renormalised_distribution():
    # After top-k=3 the first token has 0.4/0.9 = 0.444 >= 0.42; on the full
    # distribution it would have 0.4 < 0.42 and keep a second token.
    assert probs_of(DESCENDING, top_k=3, top_p=0.42) == pytest.approx([1, 0, 0, 0], abs=1e-6)
    assert probs_of(DESCENDING, top_p=0.42) == pytest.approx([4 / 7, 3 / 7, 0, 0], abs=1e-6)


def test_top_p_counts_top_k_ties_beyond_k():
    # top-k=2 keeps the three tied 0.2s (mass 0.9); renormalised, the first
    # token has 1/3 < 0.35, so top-p needs the tie group and keeps all of it.
    row = log_list([0.3, 0.2, 0.2, 0.2, 0.1])
    assert probs_of(row, top_k=2, top_p=0.35) == pytest.approx([3 / 9, 2 / 9, 2 / 9, 2 / 9, 0], abs=1e-6)
    assert probs_of(row, top_k=2, top_p=0.3) == pytest.approx([1, 0, 0, 0, 0], abs=1e-6)


def test_min_p_is_relative_to_the_best_token():
    row = log_list([0.5, 0.3, 0.15, 0.05])
    # Threshold 0.2 * 0.5 = 0.1 drops only the last token.
    assert probs_of(row, min_p=0.2) == pytest.approx(normalised([0.5, 0.3, 0.15, 0]), abs=1e-6)
    assert probs_of(row, min_p=0.7) == pytest.approx([1, 0, 0, 0], abs=1e-6)


def test_min_p_after_top_p():
    row = log_list([0.5, 0.3, 0.15, 0.05])
    # top-p 0.9 keeps three tokens, min-p 0.4 (threshold 0.2) then keeps two.
    assert probs_of(row, top_p=0.9, min_p=0.4) == pytest.approx([5 / 8, 3 / 8, 0, 0], abs=1e-6)


def test_repetition_penalty_over_prompt_and_output():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    row = ctx(prompt=[0], output=[1], repetition_penalty=2.0)
    # Seen tokens 0 (prompt) and 1 (output): 2 / 2 = 1, -1 * 2 = -2.
    assert target_probs(logits, [row])[0].tolist() == pytest.approx(softmax([1.0, -2.0, 0.5, 1.0]), abs=1e-6)


def test_frequency_and_presence_over_output_only():
    logits = torch.zeros(1, 4)
    row = ctx(prompt=[3, 3], output=[1, 1, 2], frequency_penalty=0.5, presence_penalty=0.25)
    # token 1: -0.5 * 2 - 0.25; token 2: -0.5 - 0.25; prompt token 3 untouched.
    expected = softmax([0.0, -1.25, -0.75, 0.0])
    assert target_probs(logits, [row])[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_repetition_penalty_then_frequency():
    logits = torch.tensor([[3.0, 0.0, 0.0]])
    row = ctx(prompt=[], output=[0], repetition_penalty=1.5, frequency_penalty=1.0)
    assert target_probs(logits, [row])[0].tolist() == pytest.approx(softmax([1.0, 0.0, 0.0]), abs=1e-6)


def test_greedy_is_one_hot_argmax_of_penalised_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0]] * 2)
    rows = [ctx(temperature=0.0, top_k=1, top_p=0.1),
            ctx(temperature=0.0, output=[1], frequency_penalty=1.5)]
    probs = target_probs(logits, rows)
    assert probs.tolist() == [[0, 1, 0], [0, 0, 1]]


def test_output_is_float32_and_normalised():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rows = [ctx(), ctx(top_k=5, top_p=0.8, min_p=0.05), ctx(temperature=0.0)]
    probs = target_probs(logits, rows)
    assert probs.dtype == torch.float32
    assert probs.sum(-1).tolist() == pytest.approx([1, 1, 1], abs=1e-5)


def mixed_rows() -> list[RowContext]:
    return [
        ctx(),
        ctx(temperature=0.0),
        ctx(temperature=0.7, top_k=4),
        ctx(top_p=0.6, output=[1, 2, 2]),
        ctx(temperature=1.3, min_p=0.1, presence_penalty=0.5, output=[0, 3]),
        ctx(temperature=0.0, repetition_penalty=1.3, prompt=[5, 6], output=[7]),
        ctx(top_k=3, top_p=0.9, min_p=0.05, frequency_penalty=-0.5, output=[9, 9, 9]),
        ctx(temperature=0.5, repetition_penalty=0.8, prompt=[2, 4], output=[4]),
    ]


def test_mixed_batch_equals_row_by_row():
    rows = mixed_rows()
    logits = torch.randn(len(rows), 12, generator=torch.Generator().manual_seed(1)) * 2
    batch = target_probs(logits, rows)
    for i, row in enumerate(rows):
        alone = target_probs(logits[i: i + 1], [row])[0]
        torch.testing.assert_close(batch[i], alone, atol=1e-6, rtol=0)


def test_target_probs_does_not_modify_logits():
    rows = mixed_rows()
    logits = torch.randn(len(rows), 12, generator=torch.Generator().manual_seed(2))
    before = logits.clone()
    target_probs(logits, rows)
    assert torch.equal(logits, before)


def test_same_seed_same_samples():
    probs = torch.softmax(torch.randn(1, 30, generator=torch.Generator().manual_seed(3)), -1)
    first = torch.multinomial(probs, 20, replacement=True, generator=make_generator(42))
    again = torch.multinomial(probs, 20, replacement=True, generator=make_generator(42))
    other = torch.multinomial(probs, 20, replacement=True, generator=make_generator(43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_unseeded_generators_differ():
    assert make_generator(None).initial_seed() != make_generator(None).initial_seed()


def test_compute_logprobs_values_and_shapes():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]] * 3)
    result = compute_logprobs(logits, torch.tensor([0, 2, 1]), [None, 0, 2])
    expected = log_list(softmax([1.0, 2.0, 3.0, 0.0]))
    assert result[0] is None
    assert result[1].token_id == 2 and result[1].top == []
    assert result[1].logprob == pytest.approx(expected[2], abs=1e-6)
    assert result[2].token_id == 1
    assert [t for t, _ in result[2].top] == [2, 1]
    assert [v for _, v in result[2].top] == pytest.approx([expected[2], expected[1]], abs=1e-6)


def test_compute_logprobs_caps_top_at_vocab_and_ignores_sampling_params():
    logits = torch.tensor([[0.0, 1.0]])
    (only,) = compute_logprobs(logits, torch.tensor([0]), [5])
    assert len(only.top) == 2
    assert only.logprob == pytest.approx(math.log(1 / (1 + math.e)), abs=1e-6)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        target_probs(torch.zeros(2, 4), [ctx()])
