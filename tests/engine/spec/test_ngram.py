"""The incremental n-gram index proposes exactly what a brute-force scan does."""
import random

from engine.spec.ngram import NgramIndex, find_ngram_continuation


def test_index_matches_brute_force_as_tokens_arrive():
    rng = random.Random(0)
    for trial in range(30):
        tokens = [rng.randrange(6) for _ in range(rng.randint(1, 80))]
        index = NgramIndex(1, 4)
        for cut in range(1, len(tokens) + 1):
            index.extend(tokens[len(index.tokens):cut])
            assert index.continuation(5) == find_ngram_continuation(tokens[:cut], 1, 4, 5)


def test_min_n_is_respected():
    index = NgramIndex(2, 3)
    index.extend([1, 2, 3, 9, 3])
    assert index.continuation(4) == ([], 0)  # only a 1-token match exists
    index.extend([1, 2])
    assert index.continuation(2) == ([3, 9], 2)
