"""engine/spec/training/scripts/vocab_cost.py: the same head trained over
the whole vocabulary and over a draft vocabulary, on a prepared work
directory (here the tiny target's features)."""
from __future__ import annotations

import json

from engine.spec.training.features import collect_features
from engine.spec.training.scripts import vocab_cost


def test_compares_the_whole_vocabulary_with_a_draft_vocabulary(tiny_target, samples, tmp_path, monkeypatch):
    work = tmp_path / "data"
    held = [s for s in samples if int(s.id.split("/")[1]) < 4]
    train = [s for s in samples if s not in held]
    collect_features(tiny_target, train, (1, 2), str(work / "features-train-responses"), progress=False)
    collect_features(tiny_target, held, (1, 2), str(work / "features-heldout"), progress=False)
    monkeypatch.setattr(vocab_cost, "load_model", lambda path: tiny_target)  # the default target is SmolLM2
    threads = vocab_cost.torch.get_num_threads()
    out = tmp_path / "cost.json"
    try:
        assert vocab_cost.main(["--work-dir", str(work), "--method", "dspark", "--sizes", "0", "64",
                                "--train-tokens", "256", "--markov-rank", "8", "--out", str(out)]) == 0
    finally:
        vocab_cost.torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["train_sequences"] == len(train) and report["budget_anchors"] == 256
    whole, restricted = report["runs"]
    assert whole["draft_vocab"] == tiny_target.config.vocab_size and "coverage" not in whole
    assert restricted["draft_vocab"] == 64 and restricted["parameters"] < whole["parameters"]
    assert set(restricted["coverage"]) == set(whole["greedy_tau"]) == {"heldout"}
    assert 0 < restricted["coverage"]["heldout"] <= 1
    assert all(run["greedy_tau"]["heldout"] >= 1 and run["anchors_per_second"] > 0 for run in report["runs"])
