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
