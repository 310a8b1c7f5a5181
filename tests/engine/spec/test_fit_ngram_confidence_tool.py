"""tools.fit_ngram_confidence: the replay counts what greedy verification of
every n-gram draft would see, the fit shrinks sparse cells, and the module
it writes holds the table it printed."""
import json

import pytest

from engine.spec.ngram import FOLLOWED_ONCE, FOLLOWED_VARIOUSLY
from tools.fit_ngram_confidence import SHRINK, fit_table, log_loss, main, pooled_table, replay


def test_replay_verifies_each_block_up_to_the_first_miss():
    # Context 1 2 3 1 2: "1 2" recurs, so the block is 3 1 2 (a 2-token match);
    # the output goes 3 1 2 then 9, so all three survive.
    counts = replay([([1, 2, 3, 1, 2], [3, 1, 2, 9, 5])], min_n=1, max_n=4)
    assert counts.reached == {(FOLLOWED_ONCE, 2, 0): 1, (FOLLOWED_ONCE, 2, 1): 1, (FOLLOWED_ONCE, 2, 2): 1}
    assert counts.survived == counts.reached
    assert (counts.steps, counts.emitted) == (2, 5)  # 3 1 2 and 9 in one step, then 5 alone


def test_replay_stops_a_block_at_its_first_wrong_draft():
    counts = replay([([4, 5, 6, 4, 5], [6, 7, 8])], min_n=1, max_n=4)  # block 6 4 5: 6 right, 4 wrong
    assert counts.reached == {(FOLLOWED_ONCE, 2, 0): 1, (FOLLOWED_ONCE, 2, 1): 1}
    assert counts.survived == {(FOLLOWED_ONCE, 2, 0): 1}


def test_replay_counts_a_suffix_that_went_on_variously_apart():
    # "7" went on as 1 and as 5: the block copies the latest (5 6), which misses.
    counts = replay([([7, 1, 2, 7, 5, 6, 7], [1, 2])], min_n=1, max_n=4)
    assert counts.reached[(FOLLOWED_VARIOUSLY, 1, 0)] == 1 and counts.survived[(FOLLOWED_VARIOUSLY, 1, 0)] == 0


def test_fit_shrinks_sparse_cells_towards_the_pooled_rates_of_their_match_and_position():
    counts = replay([([1, 2, 3, 1, 2], [3, 1, 2, 9, 5])], min_n=1, max_n=4)
    pooled = pooled_table(counts, max_n=4, positions=3)
    position0 = (1 + SHRINK * 0.5) / (1 + SHRINK)
    assert pooled[1][0] == pytest.approx((1 + SHRINK * position0) / (1 + SHRINK), abs=1e-4)
    assert pooled[0][0] == pooled[2][0] == pooled[3][0] == pytest.approx(position0, abs=1e-4)  # never reached
    table = fit_table(counts, max_n=4, positions=3)
    assert table[FOLLOWED_ONCE][1][0] == pytest.approx((1 + SHRINK * pooled[1][0]) / (1 + SHRINK), abs=1e-4)
    assert table[FOLLOWED_VARIOUSLY][1][0] == pooled[1][0]  # a class never reached reads the pool
    assert table[FOLLOWED_ONCE][1][0] > pooled[1][0] > table[FOLLOWED_ONCE][0][0]


def test_log_loss_prefers_the_rates_that_happened():
    counts = replay([([4, 5, 6, 4, 5], [6, 7, 8])], min_n=1, max_n=4)
    right = [[[0.5] * 2, [0.99, 0.01], [0.5] * 2, [0.5] * 2]] * 3
    wrong = [[[0.5] * 2, [0.01, 0.99], [0.5] * 2, [0.5] * 2]] * 3
    assert log_loss(counts, right) < 0.05 < 4.0 < log_loss(counts, wrong)


def test_the_written_module_holds_the_fitted_table(tmp_path, capsys):
    data = tmp_path / "responses.jsonl"
    rows = [{"prompt_ids": [1, 2, 3, 1, 2], "response_ids": [3, 1, 2, 9, 5]},
            {"prompt_ids": [4, 5, 6, 4, 5], "response_ids": [6, 7, 8]}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "prior.py"
    assert main([str(data), "--check", str(data), "--out", str(out)]) == 0
    namespace = {}
    exec(out.read_text(), namespace)
    table = namespace["SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION"]
    expected = fit_table(replay([(r["prompt_ids"], r["response_ids"]) for r in rows], 1, 4), 4)
    assert [[list(row) for row in rows] for rows in table] == expected
    assert f"--out {out}" in out.read_text() and "check: log loss" in capsys.readouterr().out
