"""Seeded requests: Gumbel-max sampling with counter-based noise (engine/gumbel.py).

- The noise is exact integer hashing: a reference implementation in plain
  Python agrees bit for bit, and a row does not depend on its batch.
- Seeded sampling has exactly the target's distribution over seeds, at
  every position and jointly (chi-square, significance 1e-4), through the
  engine too (the 4-token model of lossless_harness, exact distribution).
- Verification under the rule emits exactly plain decoding's tokens, so a
  seeded request gives the same tokens with speculation off, every drafter,
  every policy, any k, alone or among 16 concurrent requests.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from engine import gumbel
from engine.engine import LLMEngine
from engine.sampler import make_generator
from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.rejection import coupled_verify, rejection_sample, verify_drafts
from scheduler.request import SamplingParams
from tests.engine.lossless_harness import (  # noqa: F401 (fixtures)
    ALPHA, DATASTORE_METHOD, SETTINGS, cell_counts, chi2_sf, draft_models, engine_config, exact_distribution,
    goodness_of_fit, head_checkpoints, knee_cost, serve, vocab_datastore, vocab_draft_dir, vocab_target, vocab_target_dir)

METHODS = ("ngram", DATASTORE_METHOD, "draft-model", "self-draft", *HEAD_METHODS)
MASK = 0xFFFFFFFF


# --- the noise ------------------------------------------------------------------

def reference_mix32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def reference_uniform(seed: int, position: int, token: int) -> float:
    key = reference_mix32(seed & MASK)
    key = reference_mix32(key ^ ((seed >> 32) & MASK))
    key = reference_mix32(key ^ reference_mix32((position & MASK) ^ gumbel._POSITION_SALT))
    token_key = reference_mix32((token + gumbel._TOKEN_SALT) & MASK)
    return (reference_mix32(key ^ token_key) + 0.5) / 2 ** 32


def test_hash_matches_a_plain_python_reference_bit_for_bit():
    rng = random.Random(0)
    values = [0, 1, MASK, 2 ** 31, 12345] + [rng.getrandbits(32) for _ in range(2000)]
    assert gumbel._mix32_(torch.tensor(values)).tolist() == [reference_mix32(v) for v in values]
    seeds, positions = [0, -1, 2 ** 40 + 7, 123456789], [0, 5, 2 ** 20, 3]
    noise = gumbel.exponential_noise(seeds, positions, 50)
    for row, (seed, position) in enumerate(zip(seeds, positions)):
        for token in (0, 1, 17, 49):
            assert noise[row, token].item() == -torch.log(torch.tensor(reference_uniform(seed, position, token),
                                                                       dtype=torch.float64)).item()


def test_a_row_does_not_depend_on_its_batch():
    alone = gumbel.exponential_noise([42], [7], 1000)
    batch = gumbel.exponential_noise([1, 42, 42], [7, 7, 8], 1000)
    assert torch.equal(alone[0], batch[1])
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])


def test_uniforms_are_uniform_and_distinct_within_a_row():
    noise = gumbel.exponential_noise([3, 4], [0, 0], 2 ** 16)
    uniform = torch.exp(-noise)
    for row in uniform:
        assert row.unique().numel() == row.numel()
        counts = torch.histc(row, bins=64, min=0, max=1).double()
        statistic = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
        assert chi2_sf(statistic, 63) > ALPHA


def random_distributions(rows: int, vocab: int, seed: int) -> torch.Tensor:
    weights = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(seed)) + 0.1
    return weights / weights.sum(-1, keepdim=True)


def test_seeded_tokens_follow_the_distribution_at_each_position_and_jointly():
    probs = random_distributions(2, 5, seed=1)
    seeds = list(range(40_000))
    first = gumbel.seeded_tokens(probs[[0] * len(seeds)], seeds, [0] * len(seeds))
    second = gumbel.seeded_tokens(probs[[1] * len(seeds)], seeds, [1] * len(seeds))
    joint = (probs[0][:, None] * probs[1][None, :]).reshape(-1).double()
    fit = goodness_of_fit(torch.bincount(first * 5 + second, minlength=25).double(), joint)
    assert not fit.rejects, str(fit)
    marginal = goodness_of_fit(torch.bincount(first, minlength=5).double(), probs[0].double())
    assert not marginal.rejects, str(marginal)


def test_a_token_of_probability_zero_never_wins():
    probs = torch.tensor([[0.0, 1e-9, 0.0, 1.0 - 1e-9]]).repeat(5000, 1)
    tokens = gumbel.seeded_tokens(probs, list(range(5000)), [0] * 5000)
    assert set(tokens.tolist()) <= {1, 3}


# --- verification under the rule ----------------------------------------------------

def packed_case(num_draft: list[int], vocab: int, seed: int):
    """Random drafts and target rows for a batch: (drafts [D], target rows [D + R, V])."""
    gen = torch.Generator().manual_seed(seed)
    drafts = torch.randint(0, vocab, (sum(num_draft),), generator=gen)
    return drafts, random_distributions(sum(num_draft) + len(num_draft), vocab, seed)


def test_coupled_verification_emits_plain_decodings_tokens():
    num_draft, vocab = [0, 3, 5, 1], 3
    seeds, first = [11, 12, 13, 14], [0, 4, 9, 2]
    drafts, target = packed_case(num_draft, vocab, seed=3)
    result = coupled_verify(drafts, target, num_draft, seeds, first)
    row = start = 0
    for n, seed, position, emitted, accepted in zip(num_draft, seeds, first, result.emitted_token_ids,
                                                    result.num_accepted):
        plain = gumbel.seeded_tokens(target[row: row + n + 1], [seed] * (n + 1),
                                     list(range(position, position + n + 1))).tolist()
        matches = 0
        while matches < n and drafts[start + matches].item() == plain[matches]:
            matches += 1
        assert accepted == matches and emitted == plain[: matches + 1]
        row, start = row + n + 1, start + n


def test_a_mixed_batch_splits_into_the_two_rules():
    num_draft, vocab = [2, 0, 3, 1], 4
    seeds = [None, 21, None, 22]
    drafts, target = packed_case(num_draft, vocab, seed=5)
    draft_probs = random_distributions(sum(num_draft), vocab, seed=6)
    mixed = verify_drafts(drafts, draft_probs, target, num_draft, [make_generator(1), None, make_generator(2), None],
                          seeds, [0, 3, 1, 6])
    unseeded = rejection_sample(torch.cat([drafts[0:2], drafts[2:5]]), torch.cat([draft_probs[0:2], draft_probs[2:5]]),
                                torch.cat([target[0:3], target[4:8]]), [2, 3], [make_generator(1), make_generator(2)])
    seeded = coupled_verify(torch.cat([drafts[5:6]]), torch.cat([target[3:4], target[8:10]]), [0, 1], [21, 22], [3, 6])
    assert mixed.emitted_token_ids == [unseeded.emitted_token_ids[0], seeded.emitted_token_ids[0],
                                       unseeded.emitted_token_ids[1], seeded.emitted_token_ids[1]]
    assert mixed.num_accepted == [unseeded.num_accepted[0], seeded.num_accepted[0],
                                  unseeded.num_accepted[1], seeded.num_accepted[1]]


# --- through the engine ---------------------------------------------------------------

SEEDED = [SamplingParams(temperature=1.0, seed=1000 + i, max_tokens=16, ignore_eos=True) for i in range(8)] + [
    SamplingParams(temperature=0.8, top_k=3, top_p=0.9, min_p=0.05, repetition_penalty=1.2, frequency_penalty=0.3,
                   presence_penalty=0.2, seed=2000 + i, max_tokens=16, ignore_eos=True) for i in range(8)]
SEEDED_PROMPTS = [[3, 1, 3, 0, 3, 1][: 2 + i % 5] for i in range(len(SEEDED))]


def make_engine(target, method: str, policy: str, draft_models, k: int = 3, max_num_seqs: int = 16) -> LLMEngine:
    config = engine_config(target, method, policy, draft_models.get(method), k, max_num_seqs)
    return LLMEngine(config, loaded=target, step_cost=knee_cost(max_num_seqs + max_num_seqs // 2))


@pytest.fixture(scope="module")
def seeded_plain(vocab_target, draft_models):
    """Speculation off, one request at a time."""
    engine = make_engine(vocab_target, "none", "static", draft_models)
    return [engine.generate([prompt], params)[0] for prompt, params in zip(SEEDED_PROMPTS, SEEDED)]


@pytest.mark.parametrize("policy, k", [("static", 1), ("static", 3), ("adaptive", 3), ("adaptive-async", 3)])
@pytest.mark.parametrize("method", METHODS)
def test_seeded_requests_reproduce_with_speculation_on(vocab_target, draft_models, seeded_plain, method, policy, k):
    alone = make_engine(vocab_target, method, policy, draft_models, k)
    assert [alone.generate([p], q)[0] for p, q in zip(SEEDED_PROMPTS, SEEDED)] == seeded_plain
    concurrent = make_engine(vocab_target, method, policy, draft_models, k)
    assert concurrent.generate(SEEDED_PROMPTS, SEEDED) == seeded_plain
    for engine in (alone, concurrent):
        assert engine.stats.num_accepted_tokens > 0, "no draft was accepted: nothing was tested"
        if method == DATASTORE_METHOD:
            datastore = engine.stats.spec_by_source["datastore"]
            assert 0 < datastore.num_accepted_tokens < datastore.num_draft_tokens


def test_seeded_plain_decoding_has_the_target_distribution(vocab_target):
    """Seeds 0..N-1 of plain decoding against the exact distribution (the
    statistics of lossless_harness)."""
    engine = LLMEngine(engine_config(vocab_target, "none", "static", None, 1, 128), loaded=vocab_target)
    for setting in SETTINGS:
        params = [dataclasses.replace(setting.params, seed=seed) for seed in range(3500)]
        outputs = serve(engine, [list(setting.prompt)] * len(params), params, window=256)
        fit = goodness_of_fit(cell_counts(outputs), exact_distribution(vocab_target, setting))
        assert fit.power >= 0.9 and not fit.rejects, f"{setting.name}: {fit}"


def test_the_agreement_formula_of_the_benchmark_matches_seeded_sampling():
    """tools/seeded_acceptance.py prices the seeded rule with a closed form of
    P(both Gumbel argmaxes agree); seeded sampling must agree that often."""
    from tools.seeded_acceptance import gumbel_agreement, rejection_acceptance

    p, q = random_distributions(1, 6, seed=8).double(), random_distributions(1, 6, seed=9).double() ** 3
    q = q / q.sum()
    agreement, remainder = gumbel_agreement(p, q)
    n = 100_000
    target = gumbel.seeded_tokens(p.repeat(n, 1), list(range(n)), [0] * n)
    draft = gumbel.seeded_tokens(q.repeat(n, 1), list(range(n)), [0] * n)
    observed = float((target == draft).double().mean())
    assert abs(float(remainder)) < 1e-12  # every token was summed
    assert abs(observed - float(agreement)) < 5 * (0.25 / n) ** 0.5
    assert float(agreement) < float(rejection_acceptance(p, q))  # the price of coupling by noise
