"""Prompt sets: entry-by-entry JSON, the three packaged formats, sampling."""
import gzip
import json
import zipfile

import pytest

from bench import datasets
from bench.datasets import (PackagedFile, code_copy_prompts, chat_prompts, iter_json_array, parse_human_eval,
                            parse_mt_bench, parse_sharegpt, read_packaged_bytes, sample)

CONVERSATIONS = [
    {"id": "a_0", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]},
    {"id": "b_0", "conversations": [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "no"}]},
    {"id": "c_0", "conversations": [{"from": "human", "value": "Only a question"}]},
    {"id": "d_0", "conversations": [{"from": "human", "value": "Braces } and ] in \"text\""},
                                    {"from": "gpt", "value": "ok, [1, {2}]"}]},
    {"id": "e_0", "conversations": [{"from": "human", "value": "x" * 50}, {"from": "gpt", "value": "long"}]},
]


def truncated_dump(entries, cut_into_last: int) -> str:
    """A pretty-printed JSON array cut `cut_into_last` characters into its last element."""
    text = json.dumps(entries, indent=2)
    last_start = text.rindex('{\n    "id"')
    return text[:last_start + cut_into_last]


def chunks(text: str, size: int):
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_complete_array_in_any_chunking():
    text = json.dumps(CONVERSATIONS, indent=2)
    for size in (1, 7, 64, len(text)):
        assert list(iter_json_array(chunks(text, size))) == CONVERSATIONS


def test_truncated_array_yields_the_complete_elements():
    for cut in (1, 10, 40):
        text = truncated_dump(CONVERSATIONS, cut)
        for size in (3, 50, len(text)):
            assert list(iter_json_array(chunks(text, size))) == CONVERSATIONS[:-1]


def test_truncated_between_elements():
    text = json.dumps(CONVERSATIONS[:2])[:-1] + ",\n  "
    assert list(iter_json_array([text])) == CONVERSATIONS[:2]


def test_not_an_array():
    with pytest.raises(ValueError):
        list(iter_json_array(['{"a": 1}']))


def test_sharegpt_keeps_human_first_conversations_with_a_reply():
    text = truncated_dump(CONVERSATIONS + [CONVERSATIONS[0]], 30)
    prompts = parse_sharegpt(chunks(text, 16), max_prompt_chars=40)
    assert [p.id for p in prompts] == ["sharegpt-a_0", "sharegpt-d_0"]
    assert prompts[0].messages == ({"role": "user", "content": "Hi there"},)
    assert prompts[0].reference_chars == len("Hello!")


def test_mt_bench_first_turns():
    lines = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorter."]},
             {"question_id": 82, "category": "math", "turns": ["2+2?", "Times 3?"]}]
    prompts = parse_mt_bench(("\n".join(json.dumps(x) for x in lines) + "\n").encode())
    assert [p.id for p in prompts] == ["mtbench-81", "mtbench-82"]
    assert prompts[1].messages[0]["content"] == "2+2?"


def test_human_eval_asks_to_complete_the_function():
    problem = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
               "canonical_solution": "    return a + b\n", "test": "", "entry_point": "add"}
    prompts = parse_human_eval(gzip.compress((json.dumps(problem) + "\n").encode()))
    assert prompts[0].id == "HumanEval-0"
    assert "def add(a, b):" in prompts[0].messages[0]["content"]
    assert "Complete" in prompts[0].messages[0]["content"]


def test_packaged_file_read_from_a_cached_wheel(tmp_path):
    # Not installed: read from the wheel in the cache (no download when present).
    spec = PackagedFile("specserve-fake-data", "1.0", "fake_data/data/q.jsonl")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "specserve_fake_data-1.0-py3-none-any.whl", "w") as z:
        z.writestr(spec.member, b"payload")
    assert read_packaged_bytes(spec, cache_dir=tmp_path) == b"payload"


def test_sampling_is_deterministic_and_cycles():
    prompts = code_copy_prompts()
    assert [p.id for p in sample(prompts, 10, seed=3)] == [p.id for p in sample(prompts, 10, seed=3)]
    assert [p.id for p in sample(prompts, 10, seed=3)] != [p.id for p in sample(prompts, 10, seed=4)]
    many = sample(chat_prompts(), 30, seed=0)
    assert len(many) == 30 and len({p.id for p in many[:12]}) == 12  # a full round before repeats


def test_built_in_sets():
    code = code_copy_prompts()
    assert len(code) >= 20 and all("```" in p.messages[0]["content"] for p in code)
    assert len(chat_prompts()) >= 10


def test_unknown_dataset():
    with pytest.raises(ValueError):
        datasets.load_prompts("nope", 1)
