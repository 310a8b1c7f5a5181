"""tools.fit_datastore_confidence counts a datastore's drafts by position and
share as greedy verification reaches them, fits shrunk survival rates, and
stores them in the datastore file."""
import json

import numpy as np
import pytest

from engine.spec.datastore import SHARE_BINS, NgramDatastore, build_datastore
from tools import fit_datastore_confidence as tool


def _datastore() -> NgramDatastore:
    # After 1: 2 (3 times in 4: share 0.75); after 2: 3 (always); after 3: 4.
    return build_datastore([[1, 2, 3, 4]] * 3 + [[1, 5]], max_n=1, min_count=1, tokenizer="t")


def test_drafts_are_counted_where_verification_reaches_them():
    # Step 1 after [1]: drafts 2 (share 0.75) 3 4 (share 1.0); 2 and 3
    # survive, 4 misses (the output has 9). Step 2 then emits 2, 3, 9 and
    # the next context [9] has no follower: a step with no drafts.
    counts = tool.replay(_datastore(), [([1], [2, 3, 9, 7])], block=8)
    assert counts.reached == {(0, 1, 7): 1, (1, 1, 9): 1, (2, 1, 9): 1}  # (position, context, tenth)
    assert counts.survived == {(0, 1, 7): 1, (1, 1, 9): 1}
    assert (counts.steps, counts.emitted) == (2, 4)


def test_rates_shrink_towards_their_positions_then_their_shares_pooled_rate():
    counts = tool.ShareCounts()
    counts.reached.update({(0, 2, 9): 100, (0, 1, 9): 2, (1, 2, 9): 4})
    counts.survived.update({(0, 2, 9): 80, (0, 1, 9): 0, (1, 2, 9): 4})
    table = tool.fit_map(counts, max_n=2, shrink=8.0)
    by_share = (84 + 8 * 0.95) / (106 + 8)  # tenth 9 over every position and context
    at_0 = (80 + 8 * by_share) / (102 + 8)  # position 0, both contexts
    at_1 = (4 + 8 * by_share) / (4 + 8)
    assert table.shape == (tool.POSITIONS, 2, SHARE_BINS)
    assert table[0, 1, 9] == pytest.approx((80 + 8 * at_0) / 108)
    assert table[0, 0, 9] == pytest.approx(8 * at_0 / 10)  # two misses pull it down, a little
    assert table[1, 0, 9] == pytest.approx(at_1)  # never reached: its position's rate
    assert table[5, 1, 9] == pytest.approx(by_share)  # a position never reached: the share's
    assert table[0, 0, 2] == pytest.approx(0.25)  # a tenth never reached: its middle share


def test_fit_write_stores_the_map_in_the_datastore(tmp_path, capsys):
    path = str(tmp_path / "d.safetensors")
    _datastore().save(path)
    responses = tmp_path / "replies.jsonl"
    rows = [{"id": f"p{i}", "source": "sharegpt", "prompt_ids": [1], "response_ids": [2, 3, 4, 9]} for i in range(3)]
    responses.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tool.main(["fit", path, str(responses)])
    assert NgramDatastore.load(path).survival is None  # printed, not written
    tool.main(["fit", path, str(responses), "--write"])
    loaded = NgramDatastore.load(path)
    assert loaded.survival is not None and "3 of the target's greedy replies" in loaded.survival_fit
    assert loaded.survival[0, 0, 7] > 0.75  # the share's 0.75 survived every time here
    out = capsys.readouterr().out
    assert "log loss: raw shares" in out and "wrote the map" in out
    assert np.array_equal(loaded.keys, _datastore().keys)
