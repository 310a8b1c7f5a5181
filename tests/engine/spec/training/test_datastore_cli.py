"""`specserve build-datastore` counts the assistant replies it is given, in
the target's tokens, and writes a datastore the engine accepts for that
target (and refuses for another)."""
from engine.spec import ngram
from engine.spec.datastore import NgramDatastore, tokenizer_fingerprint
from engine.spec.training import datastore_cli
from engine.tokenizer import Tokenizer
from cli.main import main
from tests.tiny_model import make_tiny_model_dir

REPLIES = ["def add(a, b):\n    return a + b\n"] * 3 + ["The quick brown fox jumps over the lazy dog."] * 2


def test_builds_a_datastore_of_the_replies_in_the_targets_tokens(tmp_path, monkeypatch, capsys):
    model_dir = make_tiny_model_dir(tmp_path / "target", seed=1)
    asked = []
    monkeypatch.setattr(datastore_cli, "assistant_replies", lambda n: asked.append(n) or REPLIES)
    out = tmp_path / "store" / "datastore.safetensors"
    assert main(["build-datastore", "--model", str(model_dir), "--conversations", "7", "--max-n", "3",
                 "--min-count", "2", "--out", str(out)]) == 0
    assert asked == [7]
    tokenizer = Tokenizer.from_dir(str(model_dir))
    datastore = ngram.load_datastore(str(out), tokenizer)  # the target's own fingerprint
    assert datastore.tokenizer == tokenizer_fingerprint(tokenizer.backend.get_vocab())
    assert datastore.max_n == 3 and "7 ShareGPT train-split conversations" in datastore.description
    code = tokenizer.encode(REPLIES[0])
    # Seen three times, the reply's every context is held, followed as in the reply.
    assert datastore.continuation(code[:2], len(code) - 2)[0] == code[2:]
    assert "contexts" in capsys.readouterr().out
    assert NgramDatastore.load(str(out)).keys.size == len(datastore)


def test_reads_only_the_train_split(monkeypatch):
    seen = []

    def conversations(limit, split):
        seen.append((limit, split))
        return []

    monkeypatch.setattr(datastore_cli, "sharegpt_conversations", conversations)
    assert datastore_cli.assistant_replies(5) == [] and seen == [(5, "train")]
