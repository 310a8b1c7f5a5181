"""The committed n-gram prior (engine/spec/ngram_prior.py, written by
tools.fit_ngram_confidence) has the shape the replay measured."""
from engine.spec.ngram_prior import SURVIVAL_BY_MATCH_AND_POSITION


def test_the_served_prior_trusts_longer_matches_and_deeper_drafts_more():
    """The fitted table (engine/spec/ngram_prior.py) against the shape the
    replay measured; a regeneration that scrambled rows or columns fails."""
    first = [row[0] for row in SURVIVAL_BY_MATCH_AND_POSITION]
    assert first == sorted(first) and first[0] < 0.4 < 0.8 < first[-1]
    assert all(row[6] > row[0] for row in SURVIVAL_BY_MATCH_AND_POSITION)
    assert all(len(row) == 16 and all(0.0 < v < 1.0 for v in row) for row in SURVIVAL_BY_MATCH_AND_POSITION)
