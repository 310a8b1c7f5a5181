"""Tokenizer (round trip, special tokens, chat template) and incremental detokenizer."""
import json
import os

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from engine.detokenizer import IncrementalDetokenizer
from engine.tokenizer import Tokenizer
from tests.tiny_model import TRAINING_TEXT, make_tiny_model_dir

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing  ",
    "def f(x):\n\treturn x ** 2\n",
    "Café naïve 日本語のテキスト 中文 Привет",
    "emoji 🙂🚀🎉 family 👨‍👩‍👧 flag 🇫🇷",
    "unseen bytes: \u0000 \u00ff \U0001f9ea",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return Tokenizer.from_dir(tiny_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_and_ids(tok):
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>") == 2
    assert tok.bos_token_id == 1
    assert tok.stop_token_ids == {0, 2}  # eos plus generation_config's <|endoftext|>
    assert tok.vocab_size == 512
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "user\nhi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.id_to_token(2) == "<|im_end|>"


def test_chatml_template(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == expected
    assert tok.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"


def test_template_environment_matches_transformers_conventions(tiny_dir):
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ eos_token }}"
    )
    tok = Tokenizer.from_dir(tiny_dir)
    tok.chat_template = template
    out = tok.apply_chat_template([{"role": "user", "content": "é"}])
    assert out == '<|im_start|>{"role": "user", "content": "é"}4<|im_end|>'
    with pytest.raises(ValueError, match="first message must be from the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_missing_template_raises_clear_error(tmp_path):
    path = make_tiny_model_dir(tmp_path)
    settings_file = os.path.join(path, "tokenizer_config.json")
    with open(settings_file) as f:
        settings = json.load(f)
    del settings["chat_template"]
    with open(settings_file, "w") as f:
        json.dump(settings, f)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_dir(path).apply_chat_template([{"role": "user", "content": "hi"}])
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write("{{ messages[0]['content'] }}!")
    assert Tokenizer.from_dir(path).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


# ---------------------------------------------------------------- detokenizer


def stream(tok, ids, **kwargs):
    """Feed ids one by one; return the deltas and the detokenizer."""
    detok = IncrementalDetokenizer(tok, **kwargs)
    return [detok.add_token(i) for i in ids], detok


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_deltas_concatenate_to_decode(tok, text):
    ids = tok.encode(text)
    deltas, detok = stream(tok, ids)
    assert "".join(deltas) == detok.text == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)
    assert detok.flush() == ""


def test_detokenizer_holds_back_split_characters(tok):
    ids = tok.encode("🚀")  # four bytes; the tiny vocabulary splits them
    assert len(ids) > 1
    deltas, _ = stream(tok, ids)
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "🚀"


def test_detokenizer_special_tokens(tok):
    ids = tok.encode("a<|im_end|>b<|im_start|>")
    skipped, _ = stream(tok, ids)
    kept, _ = stream(tok, ids, skip_special_tokens=False)
    assert "".join(skipped) == "ab"
    assert "".join(kept) == "a<|im_end|>b<|im_start|>"


def test_detokenizer_flush_emits_incomplete_tail(tok):
    ids = tok.encode("ok 🚀")[:-1]  # cut inside the emoji
    deltas, detok = stream(tok, ids)
    assert "".join(deltas) == "ok "
    tail = detok.flush()
    assert tail.endswith("\ufffd") and detok.text == tok.decode(ids)


def test_detokenizer_with_metaspace_decoder():
    """SentencePiece-style decoders drop the first token's leading space: the
    windowed decode must reproduce decode() exactly, spaces included."""
    backend = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"] + byte_tokens, show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    tok = Tokenizer(backend, eos_token="</s>")
    for text in ["Hello world, how are you", "  two leading", "日本語 ok 🙂 end"]:
        ids = tok.encode(text)
        deltas, detok = stream(tok, ids)
        assert "".join(deltas) + detok.flush() == tok.decode(ids)
        assert all("\ufffd" not in d for d in deltas)


# ---------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_tok(tmp_path_factory):
    from gguf import GGUFReader

    from engine.models.default import default_model_path
    from engine.models.gguf_loader import build_tokenizer, read_metadata

    out = str(tmp_path_factory.mktemp("smollm2-tok"))
    backend, settings = build_tokenizer(read_metadata(GGUFReader(default_model_path())))
    backend.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f)
    return Tokenizer.from_dir(out)


@pytest.mark.slow
def test_smollm2_template_and_round_trip(smollm2_tok):
    tok = smollm2_tok
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (1, 2, 49152)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")
    ids = tok.encode(prompt)
    assert ids[0] == 1 and ids[-6:] == [2, 198, 1] + tok.encode("assistant\n")
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
        deltas, detok = stream(tok, tok.encode(text))
        assert "".join(deltas) == tok.decode(tok.encode(text))
    assert tok.encode("2024") == [tok.token_to_id(d) for d in "2024"]  # digits split one by one


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2_tok):
    transformers = pytest.importorskip("transformers")
    from engine.models.default import default_model_path

    path = default_model_path()
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for text in TEXTS + ["Numbers 12345 and 3.14, code: x = [i*2 for i in range(10)]"]:
        assert smollm2_tok.encode(text) == ref.encode(text, add_special_tokens=False)
