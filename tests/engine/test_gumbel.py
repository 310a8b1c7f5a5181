"""engine/gumbel.py: seeded Gumbel-max noise depends only on (seed,
position, token), and the race picks tokens with the target's probabilities."""
from __future__ import annotations

import torch

from engine.gumbel import exponential_noise, race_argmax, seeded_tokens


def test_noise_depends_only_on_seed_position_and_token():
    noise = exponential_noise([7, 7, 8], [3, 4, 3], vocab=50)
    assert noise.shape == (3, 50) and noise.dtype == torch.float64 and (noise > 0).all()
    again = exponential_noise([8, 7], [3, 3], vocab=50)  # other rows, other order
    assert torch.equal(again[1], noise[0]) and torch.equal(again[0], noise[2])
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert len(set(noise[0].tolist())) == 50  # distinct within a row


def test_every_seed_and_position_pair_draws_its_own_noise():
    # Pairs that a folded key would merge: the same sum (1, 2) ~ (2, 1), the
    # same xor, swapped seed and position. Each of the 32 x 32 rows differs,
    # and rows of pairs with equal seed + position are uncorrelated.
    pairs = [(seed, position) for seed in range(32) for position in range(32)]
    noise = exponential_noise([s for s, _ in pairs], [p for _, p in pairs], vocab=64)
    assert len({tuple(row.tolist()) for row in noise}) == len(pairs)
    row = {pair: noise[i] for i, pair in enumerate(pairs)}
    same_sum = [(row[(s, p)], row[(p, s)]) for s, p in pairs if s < p]
    a = torch.stack([x for x, _ in same_sum]).flatten()
    b = torch.stack([y for _, y in same_sum]).flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.05  # 31,744 pairs of draws


def test_huge_and_negative_seeds_are_taken_by_their_low_64_bits():
    assert torch.equal(exponential_noise([-1], [0], 8), exponential_noise([2**64 - 1], [0], 8))
    assert not torch.equal(exponential_noise([2**40], [0], 8), exponential_noise([0], [0], 8))


def test_seeded_tokens_follow_the_distribution_and_never_pick_zero_probability():
    probs = torch.tensor([0.0, 0.2, 0.8]).repeat(4000, 1)
    tokens = seeded_tokens(probs, list(range(4000)), [0] * 4000)
    counts = torch.bincount(tokens, minlength=3).double() / 4000
    assert counts[0] == 0 and abs(counts[2] - 0.8) < 0.03
    assert seeded_tokens(torch.zeros(0, 3), [], []).shape == (0,)


def test_race_argmax_is_the_gumbel_max_rule():
    probs, clocks = torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    assert race_argmax(probs, clocks).tolist() == [1]  # 0.5/0.5 beats 0.5/2
