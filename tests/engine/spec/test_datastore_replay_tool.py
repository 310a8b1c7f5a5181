"""tools.datastore_replay counts target steps exactly as verification would
for greedy outputs, and scores the datastore's confidences on its drafts."""
import json

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
