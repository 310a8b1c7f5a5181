"""Incremental detokenization: token ids in, text deltas out.

Decoding one token at a time is wrong in two ways: a UTF-8 character can be
split over several byte-level tokens, and some decoders treat a token
differently at the start of a text (a leading space). So each step decodes
a short window of recent tokens twice -- with and without the new ones --
and emits the difference, holding it back while it ends in an incomplete
character (U+FFFD).
"""
from __future__ import annotations

from engine.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a request's output tokens into text deltas, one token at a time.

    The concatenation of all deltas plus `flush()` equals
    `tokenizer.decode(output_ids)`; without `flush()` it lacks only a
    trailing incomplete character, if any.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.output_ids: list[int] = []
        self.text = ""
        # Tokens [prefix_offset, read_offset) are already emitted and serve as
        # context; tokens from read_offset on are not yet emitted.
        self._prefix_offset = 0
        self._read_offset = 0

    def add_token(self, token_id: int) -> str:
        """Append one token and return the text it completes ("" if held back)."""
        self.output_ids.append(token_id)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self.output_ids))
        if new_text.endswith(REPLACEMENT_CHAR) or len(new_text) <= len(prefix_text):
            return ""  # incomplete character, or nothing visible yet
        delta = new_text[len(prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.output_ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: emit what was held back, even if incomplete."""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self.output_ids))
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self.output_ids)
        self.text += delta
        return delta

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        return self.tokenizer.decode(self.output_ids[start:end], skip_special_tokens=self.skip_special_tokens)
