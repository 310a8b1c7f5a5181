"""The committed n-gram prior (engine/spec/ngram_prior.py, written by
tools.fit_ngram_confidence) has the shape the replay measured."""
from engine.spec.ngram import FOLLOWED_ALIKE, FOLLOWED_ONCE, FOLLOWED_VARIOUSLY, FOLLOWER_CLASSES
from engine.spec.ngram_prior import SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION, SURVIVAL_BY_MATCH_AND_POSITION


def test_the_served_prior_trusts_longer_matches_and_deeper_drafts_more():
    """The fitted table against the shape the replay measured; a
    regeneration that scrambled rows or columns fails."""
    for table in (SURVIVAL_BY_MATCH_AND_POSITION, *SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION):
        first = [row[0] for row in table]
        assert first == sorted(first)
        assert len(table) == 4 and all(len(row) == 16 and all(0.0 < v < 1.0 for v in row) for row in table)
    first = [row[0] for row in SURVIVAL_BY_MATCH_AND_POSITION]
    assert first[0] < 0.4 < 0.8 < first[-1]
    # deep in a block survival is higher (but a 4-token match that always
    # went on alike is near-certain from its first draft)
    assert all(row[6] > row[0] for row in SURVIVAL_BY_MATCH_AND_POSITION)


def test_a_suffix_that_went_on_variously_is_trusted_least_and_one_that_went_on_alike_most():
    """At every match length a first draft copied from a suffix whose
    occurrences were followed by different tokens survives least, and one
    whose occurrences all agreed survives most (the fit: 0.14 / 0.27 / 0.55
    after a one-token match); scrambled classes fail."""
    assert len(SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION) == FOLLOWER_CLASSES
    for n in range(4):
        rates = {f: SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION[f][n][0]
                 for f in (FOLLOWED_ONCE, FOLLOWED_ALIKE, FOLLOWED_VARIOUSLY)}
        assert rates[FOLLOWED_VARIOUSLY] < rates[FOLLOWED_ONCE] < rates[FOLLOWED_ALIKE]
