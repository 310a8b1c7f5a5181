"""Speculative acceptance: exactness, statistics, and vectorised == reference.

The statistical tests run many seeded trials in one batch: each trial is a
request that generates LENGTH tokens of a small Markov chain (the target)
by repeated speculative steps, drafting from a different Markov chain with a
random number of drafts (0..MAX_DRAFT) per step. A lossless rule makes the
first LENGTH emitted tokens follow the target chain exactly, so the counts
over all V**LENGTH sequences are compared with the chain's probabilities by
a chi-square test. Using a Markov chain (not a fixed distribution) makes
later positions depend on earlier ones, so a token emitted from the wrong
row or after the wrong prefix shows up too.

Threshold: significance 1e-4 (chi-square upper quantile by Wilson-Hilferty,
accurate to a few percent for these degrees of freedom). The tests are
seeded, so they are deterministic; the level says a correct sampler would
fail for only about 1 seed in 10,000. The same harness must flag
deliberately wrong rules, which shows it has the power to matter; their
statistics land orders of magnitude above the threshold.
"""
import math

import pytest
import torch

from engine.sampler import RowContext, make_generator, target_probs
from engine.spec import rejection
from engine.spec.rejection import rejection_sample
from engine.spec.rejection_reference import rejection_sample_reference
from scheduler.request import SamplingParams

V = 5
LENGTH = 3
MAX_DRAFT = 4
TRIALS = 30_000
ANCHOR = 0
Z_1E4 = 3.719  # standard normal upper quantile at 1e-4


# --- chains and the speculative generation harness ---------------------------

def random_chain(seed: int, vocab: int = V) -> torch.Tensor:
    """A Markov transition matrix [vocab, vocab] with no tiny entries (so every cell is testable)."""
    weights = torch.rand(vocab, vocab, generator=torch.Generator().manual_seed(seed)) + 0.15
    return weights / weights.sum(-1, keepdim=True)


TARGET = random_chain(1)
DRAFT = random_chain(2)


def speculative_sequences(target: torch.Tensor, draft: torch.Tensor, deterministic: bool,
                          seed: int, trials: int = TRIALS) -> torch.Tensor:
    """Run speculative steps until every trial has LENGTH tokens: [trials, LENGTH]."""
    rng = torch.Generator().manual_seed(seed)
    sequences = [[] for _ in range(trials)]
    last = torch.full((trials,), ANCHOR)
    active = list(range(trials))
    while active:
        emitted = speculative_step(target, draft, last[active], deterministic, rng)
        for trial, tokens in zip(active, emitted):
            sequences[trial].extend(tokens)
            last[trial] = tokens[-1]
        active = [t for t in active if len(sequences[t]) < LENGTH]
    return torch.tensor([s[:LENGTH] for s in sequences])


def speculative_step(target, draft, anchors: torch.Tensor, deterministic: bool,
                     rng: torch.Generator) -> list[list[int]]:
    """One verification step for a batch of requests sitting on `anchors` ([A])."""
    count = anchors.shape[0]
    # The number of drafts is drawn independently of the tokens, as a
    # non-anticipating scheduler would do.
    num_draft = torch.randint(0, MAX_DRAFT + 1, (count,), generator=rng)
    drafts, draft_rows = draft_chain(draft, anchors, deterministic, rng)
    contexts = torch.cat([anchors[:, None], drafts], dim=1)  # [A, MAX_DRAFT + 1]
    verify = torch.arange(MAX_DRAFT)[None, :] < num_draft[:, None]
    rows = torch.arange(MAX_DRAFT + 1)[None, :] <= num_draft[:, None]
    result = rejection_sample(drafts[verify], None if deterministic else draft_rows[verify],
                              target[contexts][rows], num_draft.tolist(), [rng] * count)
    return result.emitted_token_ids


def draft_chain(draft, anchors, deterministic: bool, rng):
    """MAX_DRAFT drafts per request: tokens [A, MAX_DRAFT] and their distributions [A, MAX_DRAFT, V]."""
    tokens, rows, previous = [], [], anchors
    for _ in range(MAX_DRAFT):
        row = draft[previous]
        if deterministic:
            previous = row.argmax(-1)
        else:
            previous = torch.multinomial(row, 1, generator=rng).squeeze(1)
        tokens.append(previous)
        rows.append(row)
    return torch.stack(tokens, 1), torch.stack(rows, 1)


def chain_sequence_probs(target: torch.Tensor, length: int) -> torch.Tensor:
    """Probability of every sequence of `length` tokens after ANCHOR, flattened: [V**length]."""
    probs = target[ANCHOR]
    for _ in range(length - 1):
        probs = _extend(probs, target)
    return probs


def _extend(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """probs over sequences [V**L] (last token = index % V) -> [V**(L+1)]."""
    last = torch.arange(probs.numel()) % V
    return (probs[:, None] * target[last]).reshape(-1)


def sequence_counts(sequences: torch.Tensor) -> torch.Tensor:
    """[trials, L] -> counts over the V**L sequences, same flattening as chain_sequence_probs."""
    weights = V ** torch.arange(sequences.shape[1] - 1, -1, -1)
    return torch.bincount((sequences * weights).sum(1), minlength=V ** sequences.shape[1])


# --- chi-square ----------------------------------------------------------------

def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom; cells expecting < 5 are pooled."""
    total = counts.sum().double()
    expected = probs.double() * total
    small = expected < 5
    observed = torch.cat([counts[~small].double(), counts[small].sum().double().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return float(statistic), int(keep.sum()) - 1


def chi_square_critical(df: int, z: float = Z_1E4) -> float:
    """Upper quantile of chi-square(df) by the Wilson-Hilferty approximation."""
    c = 2.0 / (9.0 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def distribution_statistics(sequences: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(statistic, critical value) for the first token and for the whole prefix."""
    result = {}
    for name, length in (("first", 1), ("prefix", LENGTH)):
        stat, df = chi_square(sequence_counts(sequences[:, :length]), chain_sequence_probs(TARGET, length))
        result[name] = (stat, chi_square_critical(df))
    return result


# --- statistical tests ------------------------------------------------------------

@pytest.mark.parametrize("deterministic", [False, True], ids=["draft-probs", "deterministic-drafter"])
def test_emitted_tokens_follow_the_target(deterministic):
    sequences = speculative_sequences(TARGET, DRAFT, deterministic, seed=10)
    for name, (stat, critical) in distribution_statistics(sequences).items():
        assert stat < critical, f"{name}: chi2 {stat:.1f} >= {critical:.1f}"


def accept_always(uniform, p_t_x, p_d_x):
    return torch.ones_like(uniform, dtype=torch.bool)


def accept_by_target_only(uniform, p_t_x, p_d_x):
    return uniform < p_t_x


def recover_from_target(p_t, p_d):
    return p_t


WRONG_RULES = [
    ("_accept", accept_always, False),
    ("_accept", accept_always, True),
    ("_residual", recover_from_target, False),
    ("_accept", accept_by_target_only, False),  # ignores p_d: only right for a deterministic drafter
]


@pytest.mark.parametrize("hook, wrong, deterministic", WRONG_RULES,
                         ids=["accept-always", "accept-always-deterministic",
                              "recover-from-target", "ignore-draft-prob"])
def test_harness_detects_wrong_rules(monkeypatch, hook, wrong, deterministic):
    monkeypatch.setattr(rejection, hook, wrong)
    sequences = speculative_sequences(TARGET, DRAFT, deterministic, seed=10, trials=TRIALS // 2)
    for name, (stat, critical) in distribution_statistics(sequences).items():
        assert stat > critical, f"{name}: wrong rule not detected, chi2 {stat:.1f} <= {critical:.1f}"


def test_zero_drafts_is_plain_sampling():
    probs = TARGET[ANCHOR].expand(TRIALS, V)
    rng = make_generator(7)
    result = rejection_sample(torch.empty(0, dtype=torch.long), None, probs, [0] * TRIALS, [rng] * TRIALS)
    assert result.num_accepted == [0] * TRIALS
    tokens = torch.tensor([e[0] for e in result.emitted_token_ids])
    stat, df = chi_square(torch.bincount(tokens, minlength=V), TARGET[ANCHOR])
    assert stat < chi_square_critical(df)


# --- greedy exactness ---------------------------------------------------------------

def greedy_batch(num_draft: list[int], vocab: int, seed: int):
    """Greedy target rows built by target_probs (temperature 0) and drafts that sometimes match."""
    gen = torch.Generator().manual_seed(seed)
    rows = sum(num_draft) + len(num_draft)
    logits = torch.randn(rows, vocab, generator=gen)
    probs = target_probs(logits, [RowContext(SamplingParams(temperature=0.0), [1], [])] * rows)
    argmax = logits.argmax(-1)
    layout = rejection._Layout(num_draft, torch.device("cpu"))
    match = torch.rand(sum(num_draft), generator=gen) < 0.7
    random_tokens = torch.randint(0, vocab, (sum(num_draft),), generator=gen)
    drafts = torch.where(match, argmax[layout.verify_rows], random_tokens)
    draft_probs = torch.softmax(torch.randn(sum(num_draft), vocab, generator=gen), -1)
    return drafts, draft_probs, probs, argmax


def expected_greedy(drafts: list[int], argmax: list[int]) -> list[int]:
    """Plain greedy decoding's tokens, as far as the drafts let speculation go."""
    out = []
    for k, draft in enumerate(drafts):
        out.append(argmax[k])
        if draft != argmax[k]:
            return out
    return out + [argmax[len(drafts)]]


@pytest.mark.parametrize("use_draft_probs", [True, False])
def test_greedy_is_exact_and_uses_no_randomness(use_draft_probs):
    num_draft = [0, 1, 2, 3, 4, 4, 4, 2] * 8
    drafts, draft_probs, probs, argmax = greedy_batch(num_draft, vocab=11, seed=3)
    generators = [make_generator(i) for i in range(len(num_draft))]
    states = [g.get_state() for g in generators]
    result = rejection_sample(drafts, draft_probs if use_draft_probs else None, probs, num_draft, generators)
    d = r = 0
    for n, emitted, accepted in zip(num_draft, result.emitted_token_ids, result.num_accepted):
        assert emitted == expected_greedy(drafts[d: d + n].tolist(), argmax[r: r + n + 1].tolist())
        assert accepted == len(emitted) - 1
        d, r = d + n, r + n + 1
    assert all(torch.equal(s, g.get_state()) for s, g in zip(states, generators))


def test_requests_that_draw_nothing_skip_the_vocabulary_wide_inverse_cdf(monkeypatch):
    """Greedy rows are one-hot, so their recovered or bonus token is the
    row's argmax: the float64 cumulative sum over the vocabulary runs only
    for the rows of requests that draw (a tenth of a 32-stream greedy step),
    and the tokens are the same as plain greedy decoding's."""
    greedy_drafts, greedy_draft_probs, greedy_probs, argmax = greedy_batch([2, 3, 0, 1], vocab=11, seed=5)
    sampled_drafts, sampled_draft_probs, sampled_probs, sampled_num_draft = random_batch(3, vocab=11, seed=6)
    seen_rows = []
    inverse_cdf = rejection._sample_inverse_cdf
    monkeypatch.setattr(rejection, "_sample_inverse_cdf",
                        lambda weights, uniform: seen_rows.append(weights.shape[0]) or inverse_cdf(weights, uniform))
    greedy = rejection.rejection_sample_on_device(greedy_drafts, greedy_draft_probs, greedy_probs, [2, 3, 0, 1],
                                                  [make_generator(i) for i in range(4)], [False] * 4)
    assert seen_rows == []
    result = greedy.to_result(greedy_drafts.tolist(), [2, 3, 0, 1])
    d = r = 0
    for n, emitted in zip([2, 3, 0, 1], result.emitted_token_ids):
        assert emitted == expected_greedy(greedy_drafts[d: d + n].tolist(), argmax[r: r + n + 1].tolist())
        d, r = d + n, r + n + 1
    # A mixed batch: the greedy requests' tokens as alone, the sampled ones' rows through the inverse CDF.
    num_draft = [2, 3, 0, 1] + sampled_num_draft
    mixed = rejection.rejection_sample_on_device(
        torch.cat([greedy_drafts, sampled_drafts]), torch.cat([greedy_draft_probs, sampled_draft_probs]),
        torch.cat([greedy_probs, sampled_probs]), num_draft, [make_generator(i) for i in range(7)],
        [False] * 4 + [True] * 3)
    assert seen_rows == [3]
    assert mixed.final_tokens[:4].tolist() == greedy.final_tokens.tolist()


def test_identical_draft_and_target_accepts_everything():
    num_draft = [3] * 50
    probs = torch.softmax(torch.randn(200, 6, generator=torch.Generator().manual_seed(4)), -1)
    verify = rejection._Layout(num_draft, torch.device("cpu")).verify_rows
    drafts = torch.multinomial(probs[verify], 1, generator=make_generator(5)).squeeze(1)
    result = rejection_sample(drafts, probs[verify], probs, num_draft, [make_generator(6)] * 50)
    assert result.num_accepted == [3] * 50


# --- vectorised == reference ---------------------------------------------------------

def random_batch(num_requests: int, vocab: int, seed: int):
    """Mixed requests: dense, sparse (filtered) and one-hot (greedy) target rows; drafts with zeros."""
    gen = torch.Generator().manual_seed(seed)
    num_draft = torch.randint(0, MAX_DRAFT + 1, (num_requests,), generator=gen).tolist()
    kind = torch.randint(0, 3, (num_requests,), generator=gen)
    rows_kind = torch.repeat_interleave(kind, torch.tensor(num_draft) + 1)
    weights = torch.rand(len(rows_kind), vocab, generator=gen)
    sparse = (rows_kind == 1)[:, None] & (torch.rand(len(rows_kind), vocab, generator=gen) < 0.5)
    weights = torch.where(sparse, torch.zeros_like(weights), weights)
    weights[torch.arange(len(rows_kind)), weights.argmax(-1)] += 0.1  # never an all-zero row
    one_hot = torch.zeros_like(weights).scatter_(1, weights.argmax(-1, keepdim=True), 1.0)
    probs = torch.where((rows_kind == 2)[:, None], one_hot, weights / weights.sum(-1, keepdim=True))
    draft_weights = torch.rand(sum(num_draft), vocab, generator=gen) * (torch.rand(sum(num_draft), vocab, generator=gen) < 0.7)
    draft_weights[:, 0] += 0.01
    draft_probs = draft_weights / draft_weights.sum(-1, keepdim=True)
    drafts = torch.multinomial(draft_probs, 1, generator=gen).squeeze(1)
    return drafts, draft_probs, probs, num_draft


@pytest.mark.parametrize("use_draft_probs", [True, False])
def test_vectorised_equals_reference_token_for_token(use_draft_probs):
    drafts, draft_probs, probs, num_draft = random_batch(300, vocab=8, seed=11)
    draft_probs = draft_probs if use_draft_probs else None
    fast_gens = [make_generator(1000 + i) for i in range(len(num_draft))]
    slow_gens = [make_generator(1000 + i) for i in range(len(num_draft))]
    fast = rejection_sample(drafts, draft_probs, probs, num_draft, fast_gens)
    slow = rejection_sample_reference(drafts, draft_probs, probs, num_draft, slow_gens)
    assert fast == slow
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(fast_gens, slow_gens))
    assert 0 < sum(fast.num_accepted) < sum(num_draft)  # both outcomes exercised


def test_request_result_is_independent_of_batch_composition():
    drafts, draft_probs, probs, num_draft = random_batch(40, vocab=8, seed=12)
    whole = rejection_sample(drafts, draft_probs, probs, num_draft, [make_generator(i) for i in range(40)])
    last = len(num_draft) - 1
    n = num_draft[last]
    alone = rejection_sample(drafts[len(drafts) - n:], draft_probs[len(drafts) - n:],
                             probs[len(probs) - n - 1:], [n], [make_generator(last)])
    assert alone.emitted_token_ids[0] == whole.emitted_token_ids[last]


def test_degenerate_residual_falls_back_to_target():
    # A drafter whose rows are twice the target's (as rounding can make
    # p_d >= p_t everywhere): rejections happen, and max(0, p_t - p_d) is 0.
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]).repeat(200, 1)
    num_draft = [1] * 200
    verify = rejection._Layout(num_draft, torch.device("cpu")).verify_rows
    draft_probs = probs[verify] * 2
    drafts = torch.ones(200, dtype=torch.long)
    fast = rejection_sample(drafts, draft_probs, probs, num_draft, [make_generator(i) for i in range(200)])
    slow = rejection_sample_reference(drafts, draft_probs, probs, num_draft, [make_generator(i) for i in range(200)])
    assert fast == slow
    recovered = [e[0] for e, a in zip(fast.emitted_token_ids, fast.num_accepted) if a == 0]
    assert recovered and set(recovered) <= {1, 2}  # sampled from p_t's support


def test_inverse_cdf_never_picks_a_zero_weight_token():
    weights = torch.tensor([[0.0, 0.3, 0.7, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    below_one = 1 - 2.0 ** -53
    assert rejection._sample_inverse_cdf(weights, torch.zeros(3, dtype=torch.float64)).tolist() == [1, 0, 3]
    assert rejection._sample_inverse_cdf(weights, torch.full((3,), below_one, dtype=torch.float64)).tolist() == [2, 1, 3]


def test_shape_errors():
    probs = torch.full((3, 4), 0.25)
    with pytest.raises(ValueError):
        rejection_sample(torch.tensor([1]), None, probs, [2], [make_generator(0)])
    with pytest.raises(ValueError):
        rejection_sample(torch.tensor([1, 2]), torch.full((2, 5), 0.2), probs, [2], [make_generator(0)])
    with pytest.raises(ValueError):
        rejection_sample(torch.tensor([1, 2]), None, probs, [2], [])
