"""Per-request size limits of ours, set by `specserve serve` flags.

OpenAI's own limits (n <= 128, 4 stop strings, ...) are static and live in
server/protocol.py. These bound what ONE request can make the server do
before admission control sees it: a completions request with a list of
prompts and `n` becomes prompts x n engine requests, so both are capped and
checked before anything is tokenized or scheduled.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLimits:
    """How big one request may be; exceeding a limit is a 400 naming the field."""

    max_prompts: int = 128  # prompts in one completions request (a list of prompts)
    max_choices: int = 128  # engine requests one HTTP request fans out to: prompts x n

    def __post_init__(self) -> None:
        if self.max_prompts < 1 or self.max_choices < 1:
            raise ValueError("max_prompts and max_choices must be >= 1")
