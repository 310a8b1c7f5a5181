"""tools.fit_ngram_confidence: the replay counts what greedy verification of
every n-gram draft would see, the fit shrinks sparse cells, and the module
it writes holds the table it printed."""
import json

import pytest

from tools.fit_ngram_confidence import SHRINK, fit_table, log_loss, main, replay


def test_replay_verifies_each_block_up_to_the_first_miss():
    # Context 1 2 3 1 2: "1 2" recurs, so the block is 3 1 2 (a 2-token match);
    # the output goes 3 1 2 then 9, so all three survive.
    counts = replay([([1, 2, 3, 1, 2], [3, 1, 2, 9, 5])], min_n=1, max_n=4)
    assert counts.reached == {(2, 0): 1, (2, 1): 1, (2, 2): 1}
    assert counts.survived == counts.reached
    assert (counts.steps, counts.emitted) == (2, 5)  # 3 1 2 and 9 in one step, then 5 alone


def test_replay_stops_a_block_at_its_first_wrong_draft():
    counts = replay([([4, 5, 6, 4, 5], [6, 7, 8])], min_n=1, max_n=4)  # block 6 4 5: 6 right, 4 wrong
    assert counts.reached == {(2, 0): 1, (2, 1): 1} and counts.survived == {(2, 0): 1}


def test_fit_shrinks_sparse_cells_towards_the_pooled_rate_of_their_position():
    counts = replay([([1, 2, 3, 1, 2], [3, 1, 2, 9, 5])], min_n=1, max_n=4)
    table = fit_table(counts, max_n=4, positions=3)
    pooled0 = (1 + SHRINK * 0.5) / (1 + SHRINK)
    assert table[1][0] == pytest.approx((1 + SHRINK * pooled0) / (1 + SHRINK), abs=1e-4)
    assert table[0][0] == table[2][0] == table[3][0] == pytest.approx(pooled0, abs=1e-4)  # never reached
    assert table[1][0] > table[0][0]


def test_log_loss_prefers_the_rates_that_happened():
    counts = replay([([4, 5, 6, 4, 5], [6, 7, 8])], min_n=1, max_n=4)
    right = [[0.5] * 2, [0.99, 0.01], [0.5] * 2, [0.5] * 2]
    wrong = [[0.5] * 2, [0.01, 0.99], [0.5] * 2, [0.5] * 2]
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
    table = namespace["SURVIVAL_BY_MATCH_AND_POSITION"]
    expected = fit_table(replay([(r["prompt_ids"], r["response_ids"]) for r in rows], 1, 4), 4)
    assert [list(row) for row in table] == expected
    assert f"--out {out}" in out.read_text() and "check: log loss" in capsys.readouterr().out
