"""scheduler/drafts.py: a block of drafts and its prefixes."""
from __future__ import annotations

import pytest

from scheduler.drafts import NO_DRAFTS, DraftBlock


def test_a_prefix_keeps_tokens_confidences_and_probabilities_aligned():
    block = DraftBlock([5, 6, 7], [0.9, 0.5, 0.1], probs=["p5", "p6", "p7"], source="ngram")
    prefix = block.prefix(2)
    assert (prefix.token_ids, prefix.confidences, prefix.probs, prefix.source) == (
        [5, 6], [0.9, 0.5], ["p5", "p6"], "ngram")
    assert block.prefix(3) is block and block.prefix(9) is block
    assert len(NO_DRAFTS) == 0 and not NO_DRAFTS


def test_every_draft_needs_a_confidence():
    with pytest.raises(ValueError, match="2 drafts with 1 confidences"):
        DraftBlock([1, 2], [0.5])


def test_expected_accepted_sums_the_chances_of_surviving_to_each_position():
    from scheduler.drafts import expected_accepted

    assert expected_accepted([]) == 0.0
    assert expected_accepted([0.5, 0.5, 1.0]) == pytest.approx(0.5 + 0.25 + 0.25)
    assert expected_accepted([0.0, 0.9]) == 0.0  # nothing past a sure miss
