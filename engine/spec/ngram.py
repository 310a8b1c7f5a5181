"""Prompt-lookup drafting: propose what followed the latest earlier match of
the request's own recent suffix (prompt and output). No weights."""
from __future__ import annotations

from engine.spec.base import DraftInput, DraftProposal, Drafter


def find_ngram_continuation(tokens: list[int], min_n: int, max_n: int, k: int) -> tuple[list[int], int]:
    """Longest suffix (max_n down to min_n tokens) that occurred earlier; return
    up to k tokens that followed its most recent earlier occurrence, and the
    matched length (0 when nothing matched)."""
    total = len(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n:]
        start = _last_occurrence(tokens, suffix, end=total - n)
        if start >= 0:
            follow = tokens[start + n: start + n + k]
            if follow:
                return follow, n
    return [], 0


def _last_occurrence(tokens: list[int], pattern: list[int], end: int) -> int:
    """Start of the last occurrence of `pattern` that begins before `end`."""
    first = pattern[0]
    n = len(pattern)
    for start in range(end - 1, -1, -1):
        if tokens[start] == first and tokens[start:start + n] == pattern:
            return start
    return -1


class NgramDrafter(Drafter):
    """Prompt lookup over each request's own tokens.

    Confidence grows with the match length (a longer match is likelier to
    continue) and decays with the distance into the draft; the load-aware
    scheduler recalibrates it from realised acceptance.
    """

    costs_compute = False

    def __init__(self, min_n: int = 1, max_n: int = 4, lookback: int = 4096):
        self.min_n, self.max_n, self.lookback = min_n, max_n, lookback

    def propose(self, inputs: list[DraftInput], block_tables=None) -> dict[str, DraftProposal]:
        proposals = {}
        for item in inputs:
            tokens = item.request.all_token_ids[-self.lookback:]
            follow, match_len = find_ngram_continuation(tokens, self.min_n, self.max_n, item.max_tokens)
            if follow:
                base = match_len / (match_len + 1.0)
                proposals[item.request.request_id] = DraftProposal(
                    follow, None, [base * 0.9 ** i for i in range(len(follow))])
        return proposals
