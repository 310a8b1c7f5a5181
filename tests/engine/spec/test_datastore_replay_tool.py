"""tools.datastore_replay counts target steps exactly as verification would
for greedy outputs, and scores the datastore's confidences on its drafts."""
import json

import pytest

from engine.spec.datastore import build_datastore
from tools import datastore_replay as tool


def test_steps_follow_the_accepted_prefix_of_each_block():
    records = [{"prompt": [5, 6, 7], "output": [5, 6, 7, 9]}]
    # Prompt lookup: at [5 6 7] nothing recurs (1 step, token 5); then "5" recurs
    # and [6, 7, 5...] is drafted: 6 and 7 survive, the third draft misses
    # (step 2 emits 6, 7 and the correction 9).
    tokens_per_step, observed = tool.replay(records, tool.prompt_lookup(), block=8)
    assert tokens_per_step == 4 / 2 and observed == []


def test_lookup_else_datastore_uses_the_datastore_only_where_lookup_has_nothing():
    datastore = build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=2, tokenizer="t")
    records = [{"prompt": [1], "output": [2, 3, 4]}]
    alone, _ = tool.replay(records, tool.prompt_lookup(), block=4)
    both, observed = tool.replay(records, tool.lookup_else(tool.prompt_lookup(), tool.from_datastore(datastore)),
                                 block=4)
    assert alone == 1.0  # nothing ever recurs: one token per step
    assert both == 3 / 1  # the datastore drafts 2, 3 (accepted) and the step emits 4
    assert observed == [(1.0, True), (1.0, True)]
    assert tool.calibration(observed) == {"drafts": 2, "mean_confidence": 1.0, "survival": 1.0, "ece": 0.0}
    assert tool.calibration([(0.75, True), (0.75, False)])["ece"] == 0.25


def test_the_replay_command_prints_each_drafter(tmp_path, capsys):
    path = str(tmp_path / "d.safetensors")
    build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=2, tokenizer="t").save(path)
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"prompt": [1], "output": [2, 3, 4]}]))
    tool.main(["replay", str(records), "--datastore", path, "--block", "4"])
    out = capsys.readouterr().out
    assert "prompt lookup: 1.000 tokens per step" in out and "prompt lookup, else datastore: 3.000" in out


def test_with_a_map_the_served_choice_is_replayed_and_scored_on_its_rates(tmp_path, capsys):
    import numpy as np

    from engine.spec.datastore import SHARE_BINS

    datastore = build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=2, tokenizer="t")
    datastore.survival = np.full((2, 2, SHARE_BINS), 0.9, dtype=np.float32)
    # [5 1 9 8 1]: lookup copies "9 8 1" after a one-token match ("1"),
    # expecting ~0.4 accepted; the datastore's "2 3" at 0.9 promises 1.71.
    records = [{"prompt": [5, 1, 9, 8, 1], "output": [2, 3, 4]}]
    lookup_first, _ = tool.replay(records, tool.lookup_else(tool.prompt_lookup(), tool.from_datastore(datastore)), 4)
    better, observed = tool.replay(records, tool.better_block(datastore), block=4)
    assert lookup_first == 3 / 2 and better == 3.0  # lookup misses first; the datastore drafts 2, 3 at once
    assert observed == [(pytest.approx(0.9), True), (pytest.approx(0.9), True)]
    path = str(tmp_path / "d.safetensors")
    datastore.save(path)
    (tmp_path / "r.json").write_text(json.dumps(records))
    tool.main(["replay", str(tmp_path / "r.json"), "--datastore", path, "--block", "4"])
    out = capsys.readouterr().out
    assert "the better block: 3.000 tokens per step" in out
    assert "the better block, follower classes pooled: 3.000 tokens per step" in out


def test_the_better_block_scores_prompt_lookups_drafts_on_the_prior_it_is_given():
    """Every draft of the served choice reports its confidence: lookup's
    from the prior of its follower class."""
    from engine.spec.ngram import FOLLOWED_VARIOUSLY

    datastore = build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=2, tokenizer="t")  # no map: lookup first
    prior = [[[0.5] * 4 for _ in range(4)] for _ in range(3)]
    prior[FOLLOWED_VARIOUSLY][0][0] = 0.1
    # "7" went on as 1, then as 5: lookup copies 5 (right), then 6 (wrong)
    records = [{"prompt": [7, 1, 2, 7, 5, 6, 7], "output": [5, 9]}]
    _, observed = tool.replay(records, tool.better_block(datastore, prior=prior), block=2)
    assert observed[:2] == [(0.1, True), (0.5, False)]


def test_suffix_continuations_gives_one_block_per_distinct_next_token_most_recent_first():
    # "7" went on as 1 2, then as 5 6, then as 1 9: lookup's block is "1 9",
    # then "5 6"; the oldest "1 2" starts like "1 9" and is left out.
    context = [7, 1, 2, 7, 5, 6, 7, 1, 9, 7]
    assert tool.suffix_continuations(context, 2, most=3) == [[1, 9], [5, 6]]
    assert tool.suffix_continuations(context, 2, most=1) == [[1, 9]]
    assert tool.suffix_continuations([1, 2, 3], 2, most=3) == []  # nothing recurs
    assert tool.suffix_continuations(context, 2, most=0) == []


def test_a_step_over_branches_keeps_the_longest_accepted_and_counts_the_tree_once():
    datastore = build_datastore([[3, 4, 8]] * 2, max_n=2, min_count=2, tokenizer="t")
    # Prompt lookup copies "4 5" after "3" (wrong at once); the datastore
    # drafts "4 8" (both right): the step emits 4, 8 and the correction 6.
    records = [{"prompt": [3, 4, 5, 3], "output": [4, 8, 6]}]
    lookup = lambda context, k: [tool.prompt_lookup()(context, k)[0]]  # noqa: E731
    store = lambda context, k: [tool.from_datastore(datastore)(context, k)[0]]  # noqa: E731
    alone, _ = tool.replay(records, tool.prompt_lookup(), block=2)
    both, verified = tool.replay_branches(records, tool.branches_of(lookup, store), block=2)
    assert both == 3 / 1 and alone < both
    assert verified == 3  # "4" is shared: nodes 4, 4-5, 4-8
    one, _ = tool.replay_branches(records, tool.branches_of(lookup), block=2)
    assert one == alone


def test_the_replay_command_prints_the_branches_when_asked(tmp_path, capsys):
    path = str(tmp_path / "d.safetensors")
    build_datastore([[3, 4, 8]] * 2, max_n=2, min_count=2, tokenizer="t").save(path)
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"prompt": [3, 4, 5, 3], "output": [4, 8, 6]}]))
    tool.main(["replay", str(records), "--datastore", path, "--block", "2", "--branches", "2"])
    out = capsys.readouterr().out
    assert "branches: prompt lookup and datastore: 3.000 tokens per step, 3.00 drafts verified" in out
    assert "branches: up to 2 continuations of the matched suffix and datastore: 3.000" in out


def test_the_served_alternative_is_the_other_sources_block_and_wins_where_the_better_one_misses():
    import numpy as np

    from engine.spec.datastore import SHARE_BINS

    datastore = build_datastore([[1, 2, 3]] * 2, max_n=2, min_count=2, tokenizer="t")
    datastore.survival = np.full((2, 2, SHARE_BINS), 0.9, dtype=np.float32)
    # The datastore's "2 3" promises more than lookup's "9 8" after a
    # one-token match, but the target copies: 9, 8, then 4.
    records = [{"prompt": [5, 1, 9, 8, 1], "output": [9, 8, 4]}]
    better, _ = tool.replay(records, tool.better_block(datastore), block=2)
    served, verified = tool.replay_branches(records, tool.served_alternatives(datastore), block=2)
    assert better == 3 / 2  # "2 3" misses: 9 alone, then lookup drafts 8 after "9"
    assert served == 3 / 1  # one step emits 9, 8 and the correction 4
    assert verified == 4  # "2 3" and "9 8"
