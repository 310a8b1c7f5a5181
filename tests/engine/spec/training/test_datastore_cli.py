"""`specserve build-datastore` counts the assistant replies it is given, in
the target's tokens, and writes a datastore the engine accepts for that
target (and refuses for another)."""
from engine.spec import ngram
from engine.spec.datastore import NgramDatastore, context_key, tokenizer_fingerprint
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


def test_generates_the_targets_replies_once_and_counts_them_by_their_weight(tmp_path, monkeypatch):
    from engine.spec.training import data
    from engine.spec.training.data import Prompt
    from engine.spec.training.generate import read_samples

    model_dir = make_tiny_model_dir(tmp_path / "target", seed=1)
    monkeypatch.setattr(datastore_cli, "assistant_replies", lambda n: [])
    asked = []

    def toy_prompts(spec, split=None):
        asked.append((spec, split))
        return [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(int(spec.split(":")[1]))]

    monkeypatch.setattr(data, "load_prompts", toy_prompts)
    responses, out = tmp_path / "responses.jsonl", tmp_path / "d.safetensors"
    common = ["build-datastore", "--model", str(model_dir), "--out", str(out), "--responses", str(responses),
              "--max-new-tokens", "12", "--gen-batch", "2", "--max-n", "2", "--min-count", "3"]
    assert main(common + ["--generate", "3", "--responses-weight", "3"]) == 0
    samples = read_samples(str(responses))
    assert asked == [("sharegpt:3", "train")] and [s.id for s in samples] == ["toy/0", "toy/1", "toy/2"]
    assert all(0 < len(s.response_ids) <= 12 for s in samples)
    datastore = NgramDatastore.load(str(out))
    first = samples[0].response_ids
    # Seen once, counted three times: every context of the reply reaches --min-count 3.
    assert context_key(first[:2]) in set(datastore.keys.tolist())
    assert "responses.jsonl x3" in datastore.description
    assert main(common + ["--generate", "3", "--responses-weight", "2"]) == 0  # nothing left to generate
    assert len(read_samples(str(responses))) == 3
    assert len(NgramDatastore.load(str(out))) < len(datastore)  # counted twice: fewer contexts reach 3


def test_generate_from_takes_only_the_rest_of_the_range(tmp_path, monkeypatch):
    from engine.spec.training import data
    from engine.spec.training.data import Prompt
    from engine.spec.training.generate import read_samples

    model_dir = make_tiny_model_dir(tmp_path / "target", seed=1)
    monkeypatch.setattr(datastore_cli, "assistant_replies", lambda n: [])
    monkeypatch.setattr(data, "load_prompts", lambda spec, split=None: [
        Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(int(spec.split(":")[1]))])
    responses = tmp_path / "second-half.jsonl"
    assert main(["build-datastore", "--model", str(model_dir), "--out", str(tmp_path / "d.safetensors"),
                 "--responses", str(responses), "--max-new-tokens", "4", "--min-count", "1",
                 "--generate", "4", "--generate-from", "2"]) == 0
    assert [s.id for s in read_samples(str(responses))] == ["toy/2", "toy/3"]


def test_generate_from_outside_the_range_is_refused():
    import pytest

    with pytest.raises(SystemExit, match="must lie in 0..1"):
        main(["build-datastore", "--out", "x.safetensors", "--responses", "r.jsonl", "--generate", "2",
              "--generate-from", "2"])


def test_generate_needs_a_responses_file():
    import pytest

    with pytest.raises(SystemExit, match="needs --responses"):
        main(["build-datastore", "--out", "x.safetensors", "--generate", "2"])
