"""The incremental n-gram index proposes exactly what a brute-force scan
does; the drafter's confidences come from its survival prior."""
import random

import pytest
import torch

from engine.spec.base import DraftInput
from engine.spec.ngram import (FOLLOWED_ALIKE, FOLLOWED_ONCE, FOLLOWED_VARIOUSLY, NgramDrafter, NgramIndex,
                               find_ngram_continuation)
from scheduler.request import Request, SamplingParams


def test_index_matches_brute_force_as_tokens_arrive():
    rng = random.Random(0)
    for trial in range(30):
        tokens = [rng.randrange(6) for _ in range(rng.randint(1, 80))]
        index = NgramIndex(1, 4)
        for cut in range(1, len(tokens) + 1):
            index.extend(tokens[len(index.tokens):cut])
            assert index.continuation(5) == find_ngram_continuation(tokens[:cut], 1, 4, 5)


def _followers_by_scan(tokens: list[int], n: int) -> int:
    """How the earlier occurrences of the last n tokens went on, by a scan."""
    suffix = tokens[len(tokens) - n:]
    followers = [tokens[s + n] for s in range(len(tokens) - n) if tokens[s:s + n] == suffix]
    if len(set(followers)) > 1:
        return FOLLOWED_VARIOUSLY
    return FOLLOWED_ONCE if len(followers) == 1 else FOLLOWED_ALIKE


def test_index_knows_how_each_matched_suffix_went_on_before():
    rng = random.Random(1)
    seen = set()
    for trial in range(30):
        tokens = [rng.randrange(4) for _ in range(rng.randint(2, 60))]
        index = NgramIndex(1, 4)
        for cut in range(1, len(tokens) + 1):
            index.extend(tokens[len(index.tokens):cut])
            follow, n = index.continuation(3)
            if follow:
                assert index.followers(n) == _followers_by_scan(tokens[:cut], n)
                seen.add(index.followers(n))
    assert seen == {FOLLOWED_ONCE, FOLLOWED_ALIKE, FOLLOWED_VARIOUSLY}


def test_min_n_is_respected():
    index = NgramIndex(2, 3)
    index.extend([1, 2, 3, 9, 3])
    assert index.continuation(4) == ([], 0)  # only a 1-token match exists
    index.extend([1, 2])
    assert index.continuation(2) == ([3, 9], 2)


def _propose(drafter, tokens, max_tokens):
    request = Request("r", tokens, SamplingParams(temperature=0.0))
    return drafter.propose([DraftInput(request, max_tokens, torch.Generator(), [])]).get("r")


def test_confidences_are_the_prior_of_the_followers_match_length_and_position():
    once = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), (0.7, 0.8, 0.9))
    alike = tuple(tuple(v + 0.01 for v in row) for row in once)
    variously = tuple(tuple(v + 0.02 for v in row) for row in once)
    prior = (once, alike, variously)
    one = _propose(NgramDrafter(1, 4, survival_prior=prior), [7, 1, 2, 3, 4, 5, 7], 4)  # "7" recurs once
    assert one.token_ids == [1, 2, 3, 4] and one.confidences == [0.1, 0.2, 0.3, 0.3]  # last column repeats
    four = _propose(NgramDrafter(1, 4, survival_prior=prior), [1, 2, 3, 4, 9, 8, 1, 2, 3, 4], 2)
    assert four.token_ids == [9, 8] and four.confidences == [0.7, 0.8]  # a 4-token match reads the last row
    # "7" went on as 1 and as 5 before: the block copies its latest follower, at the lower rates.
    mixed = _propose(NgramDrafter(1, 4, survival_prior=prior), [7, 1, 2, 7, 5, 6, 7], 2)
    assert mixed.token_ids == [5, 6] and mixed.confidences == pytest.approx([0.12, 0.22])
    alike_block = _propose(NgramDrafter(1, 4, survival_prior=prior), [7, 1, 2, 7, 1, 6, 7], 2)
    assert alike_block.token_ids == [1, 6] and alike_block.confidences == pytest.approx([0.11, 0.21])



def test_the_datastore_drafts_only_where_prompt_lookup_finds_nothing():
    from engine.spec.datastore import build_datastore

    datastore = build_datastore([[1, 2, 3, 4]] * 3, max_n=2, min_count=2, tokenizer="t")
    drafter = NgramDrafter(1, 4, datastore=datastore)
    assert drafter.sources == ("ngram", "datastore")
    copied = _propose(drafter, [1, 9, 8, 1], 3)  # "1" recurs: prompt lookup copies what followed it
    assert copied.source == "ngram" and copied.token_ids == [9, 8, 1]
    fresh = _propose(NgramDrafter(1, 4, datastore=datastore), [7, 1], 3)  # nothing recurs
    assert fresh.source == "datastore" and fresh.token_ids == [2, 3, 4] and fresh.confidences == [1.0] * 3
    assert fresh.probs is None  # a deterministic proposal, like prompt lookup's
    assert _propose(NgramDrafter(1, 4, datastore=datastore), [7, 6], 3) is None  # neither has anything
    assert NgramDrafter(1, 4).sources == ("ngram",)
    assert _propose(NgramDrafter(1, 4), [7, 1], 3) is None


def _mapped_datastore(rate: float):
    """A datastore over [1 2 3 4] whose fitted map gives every draft `rate`."""
    import numpy as np

    from engine.spec.datastore import SHARE_BINS, build_datastore

    datastore = build_datastore([[1, 2, 3, 4]] * 3, max_n=2, min_count=2, tokenizer="t")
    datastore.survival = np.full((4, 2, SHARE_BINS), rate, dtype=np.float32)
    return datastore


def test_with_a_fitted_map_the_block_that_promises_more_accepted_drafts_is_drafted():
    prior = (((0.2, 0.5, 0.5), (0.5, 0.6, 0.6), (0.7, 0.8, 0.8), (0.9, 0.9, 0.9)),) * 3  # every follower class
    # "1" recurs (a one-token match: 0.2 + 0.1 + 0.05 expected) where the
    # datastore's [2 3 4] at 0.6 each promises 0.6 + 0.36 + 0.216.
    weak = _propose(NgramDrafter(1, 4, prior, _mapped_datastore(0.6)), [1, 9, 8, 1], 3)
    assert weak.source == "datastore" and weak.token_ids == [2, 3, 4]
    assert weak.confidences == pytest.approx([0.6] * 3)  # the map's rates, not the shares (1.0)
    # The same match against a datastore mapped to 0.1: lookup promises more.
    kept = _propose(NgramDrafter(1, 4, prior, _mapped_datastore(0.1)), [1, 9, 8, 1], 3)
    assert kept.source == "ngram" and kept.token_ids == [9, 8, 1]
    # Nothing recurs: the datastore's block, however low its rates.
    assert _propose(NgramDrafter(1, 4, prior, _mapped_datastore(0.1)), [7, 1], 3).source == "datastore"


def test_the_datastore_is_not_consulted_where_lookup_promises_more_than_it_ever_could():
    prior = (((0.2, 0.5, 0.5), (0.5, 0.6, 0.6), (0.7, 0.8, 0.8), (0.95, 0.95, 0.95)),) * 3
    datastore = _mapped_datastore(0.6)
    calls = []
    original = datastore.chains
    datastore.chains = lambda contexts, ks: calls.extend(ks) or original(contexts, ks)
    drafter = NgramDrafter(1, 4, prior, datastore)
    assert _propose(drafter, [5, 6, 7, 1, 9, 5, 6, 7, 1], 3).source == "ngram"  # a 4-token match
    assert calls == []
    assert _propose(NgramDrafter(1, 4, prior, datastore), [1, 9, 8, 1], 3).source == "datastore"
    assert calls == [3]


def test_without_a_map_the_datastore_drafts_only_where_lookup_has_nothing():
    from engine.spec.datastore import build_datastore

    datastore = build_datastore([[1, 2, 3, 4]] * 3, max_n=2, min_count=2, tokenizer="t")
    weak = _propose(NgramDrafter(1, 4, (((0.01,),) * 4,) * 3, datastore), [1, 9, 8, 1], 3)
    assert weak.source == "ngram"  # however weak the match: raw shares are no survival rates
