"""Prompt sources: the streaming reader of the truncated ShareGPT file,
the stable train/test split, the bundled data packages."""
from __future__ import annotations

import json

import pytest

from engine.spec.training.data import iter_json_array, split_of


def test_truncated_json_array_is_read_entry_by_entry(tmp_path):
    entries = [{"id": f"x{i}", "conversations": [{"from": "human", "value": "hi, [a] {b} \"c\"" * i}]}
               for i in range(30)]
    text = json.dumps(entries, indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"x29"') + 3], encoding="utf-8")  # cut inside the last entry
    for chunk in (7, 64, 1 << 20):  # chunk borders inside strings and between entries
        assert [e["id"] for e in iter_json_array(str(path), chunk_chars=chunk)] == [f"x{i}" for i in range(29)]
    path.write_text(text, encoding="utf-8")
    assert len(list(iter_json_array(str(path), chunk_chars=5))) == 30


def test_split_is_stable_and_mixed():
    ids = [f"sharegpt/{i}" for i in range(400)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    assert 10 < splits.count("test") < 80


def test_bundled_prompt_sources():
    from engine.spec.training.data import load_prompts

    try:
        prompts = load_prompts("mtbench:3,humaneval:2,sharegpt:3")
    except FileNotFoundError as missing:
        pytest.skip(f"data package not installed: {missing}")
    assert [p.source for p in prompts] == ["mtbench"] * 3 + ["humaneval"] * 2 + ["sharegpt"] * 3
    assert all(p.text for p in prompts)
    assert all(p.split == "test" for p in load_prompts("humaneval:5", split="test"))


def test_sharegpt_code_source_takes_replies_with_code_and_loads_a_prompt_once(monkeypatch, tmp_path):
    from engine.spec.training import data

    test_ids = [i for i in range(200) if split_of(f"sharegpt/{i}") == "test"][:6]
    entries = [{"id": str(i), "conversations": [
        {"from": "human", "value": f"question {i}"},
        {"from": "gpt", "value": f"```python\nprint({i})\n```" if n % 2 else f"prose {i}"}]}
        for n, i in enumerate(test_ids)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    monkeypatch.setattr(data, "package_file", lambda *_: str(path))

    code = data.load_prompts("sharegpt-code:2", split="test")
    assert [p.id for p in code] == [f"sharegpt/{test_ids[1]}", f"sharegpt/{test_ids[3]}"]
    assert all("```" in p.reply for p in code)
    both = data.load_prompts("sharegpt:3,sharegpt-code:3", split="test")
    # The first three plain prompts, then the code ones not among them.
    assert [p.id for p in both] == [f"sharegpt/{i}" for i in test_ids[:3]] + [f"sharegpt/{test_ids[3]}", f"sharegpt/{test_ids[5]}"]
    assert data.evaluation_split("sharegpt-code") == "test"
