"""engine/detokenizer.py: streamed deltas add up to decode(output ids), and
an incomplete UTF-8 character is held back until it completes."""
from __future__ import annotations

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.tokenizer import Tokenizer
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(make_tiny_model_dir(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("text", ["Hello, how are you?", "Café 日本語 🙂🚀 done", "a\n\n  b"])
def test_deltas_add_up_to_the_decoded_text(tok, text):
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add_token(i) for i in ids]
    assert "".join(deltas) + detok.flush() == tok.decode(ids) == text
    assert "\ufffd" not in "".join(deltas)  # never a half character


def test_an_incomplete_character_is_held_back_then_flushed(tok):
    ids = tok.encode("🙂")
    detok = IncrementalDetokenizer(tok)
    if len(ids) < 2:
        pytest.skip("the tiny tokenizer merged the emoji into one token")
    assert detok.add_token(ids[0]) == ""
    assert detok.flush() == tok.decode(ids[:1])  # at the end it is emitted as decode() would


def test_special_tokens_are_skipped_unless_asked(tok):
    ids = tok.encode("<|im_start|>hi<|im_end|>")
    plain = IncrementalDetokenizer(tok)
    raw = IncrementalDetokenizer(tok, skip_special_tokens=False)
    assert "".join(plain.add_token(i) for i in ids) + plain.flush() == "hi"
    assert "".join(raw.add_token(i) for i in ids) + raw.flush() == "<|im_start|>hi<|im_end|>"
