"""The corpus datastore holds, for every context seen often enough, the
follower a brute-force count picks; it drafts by chaining its longest
held contexts, and refuses a file built over another vocabulary."""
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from engine.spec.datastore import (SHARE_BINS, NgramDatastore, build_datastore, context_key, share_bin,
                                    tokenizer_fingerprint)


def random_sequences(seed: int, alphabet: int = 6, count: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(alphabet) for _ in range(rng.randrange(0, 40))] for _ in range(count)]


def brute_force_counts(sequences, max_n: int) -> dict[tuple, Counter]:
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for sequence in sequences:
        for i in range(len(sequence)):
            for n in range(1, min(max_n, i) + 1):
                counts[tuple(sequence[i - n:i])][sequence[i]] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_context_seen_often_enough_gets_its_most_frequent_follower(seed):
    sequences = random_sequences(seed)
    datastore = build_datastore(sequences, max_n=3, min_count=2, tokenizer="t")
    counts = brute_force_counts(sequences, 3)
    kept = {context: c for context, c in counts.items() if sum(c.values()) >= 2}
    assert len(datastore) == len(kept) > 100
    for context, followers in kept.items():
        best = min(followers, key=lambda token: (-followers[token], token))  # ties: the lowest id
        token, confidence = datastore.lookup(list(context))
        assert token == best
        assert confidence == pytest.approx(followers[best] / sum(followers.values()), abs=1e-3)


def reference_chain(counts: dict[tuple, Counter], context: list[int], k: int, max_n: int) -> list[tuple]:
    """(token, share, held length) drafts from the brute-force counts: the
    longest held suffix's most frequent follower, chained."""
    window, drafts = list(context), []
    while len(drafts) < k:
        held = [n for n in range(min(max_n, len(window)), 0, -1) if tuple(window[len(window) - n:]) in counts]
        if not held:
            break
        followers = counts[tuple(window[len(window) - held[0]:])]
        token = min(followers, key=lambda t: (-followers[t], t))
        drafts.append((token, followers[token] / sum(followers.values()), held[0]))
        window.append(token)
    return drafts


@pytest.mark.parametrize("seed", [0, 1])
def test_chains_looked_up_together_equal_each_chain_drawn_alone(seed):
    # propose() chains every request's drafts in one search per position: a
    # window's hits must not leak into another's (contexts of every length,
    # some with nothing held, k from 0 to 6).
    sequences = random_sequences(seed, alphabet=8)
    datastore = build_datastore(sequences, max_n=3, min_count=2, tokenizer="t")
    counts = {c: f for c, f in brute_force_counts(sequences, 3).items() if sum(f.values()) >= 2}
    rng = random.Random(seed)
    contexts = [[rng.randrange(9) for _ in range(rng.randrange(0, 6))] for _ in range(40)]
    ks = [rng.randrange(0, 7) for _ in contexts]
    together = datastore.chains(contexts, ks)
    assert any(len(c) > 1 for c in together) and any(not c for c in together)
    for context, k, chain in zip(contexts, ks, together):
        expected = reference_chain(counts, context, k, 3)
        assert [(t, n) for t, _, n in chain] == [(t, n) for t, _, n in expected]
        assert [share for _, share, _ in chain] == pytest.approx([share for _, share, _ in expected], abs=1e-3)


def test_a_rare_context_falls_back_to_its_longest_held_suffix():
    # "7 1" is seen once (dropped at min_count 2); "1" is seen three times, followed by 2, 2, 3.
    datastore = build_datastore([[7, 1, 2], [5, 1, 2], [1, 3]], max_n=2, min_count=2, tokenizer="t")
    assert datastore.lookup([7, 1]) == (2, pytest.approx(2 / 3, abs=1e-3))
    assert datastore.lookup([9]) is None  # never seen


def test_no_context_spans_two_sequences():
    datastore = build_datastore([[1, 2], [3, 4], [1, 2], [3, 4]], max_n=2, min_count=2, tokenizer="t")
    assert datastore.lookup([2]) is None  # 2 ends every sequence: nothing followed it
    assert datastore.lookup([1]) == (2, 1.0)


def test_the_key_of_a_context_is_the_one_the_table_was_built_with():
    datastore = build_datastore([[4, 5, 6]] * 2, max_n=2, min_count=2, tokenizer="t")
    assert set(datastore.keys.tolist()) == {context_key(c) for c in ([4], [5], [4, 5])}
    assert context_key([5]) != context_key([0, 5])  # the length is part of the key


def test_a_continuation_chains_the_tables_drafts_and_stops_where_nothing_is_held():
    datastore = build_datastore([[1, 2, 3, 4], [1, 2, 3, 4], [2, 3, 9]], max_n=2, min_count=2, tokenizer="t")
    tokens, confidences = datastore.continuation([8, 1], 6)
    assert tokens == [2, 3, 4]  # after "2 3", 4 (twice) beats 9 (once); nothing followed 4
    assert confidences == pytest.approx([1.0, 1.0, 2 / 3], abs=1e-3)
    assert datastore.continuation([1], 2) == ([2, 3], [1.0, 1.0])


def test_building_twice_gives_the_same_table():
    first = build_datastore(random_sequences(5), max_n=4, min_count=2, tokenizer="t")
    second = build_datastore(random_sequences(5), max_n=4, min_count=2, tokenizer="t")
    for name in ("keys", "next_tokens", "confidences"):
        assert np.array_equal(getattr(first, name), getattr(second, name))


@pytest.mark.parametrize("name", ["datastore.safetensors", "datastore.safetensors.xz"])
def test_a_saved_datastore_loads_back_and_refuses_another_tokenizer(tmp_path, name):
    datastore = build_datastore(random_sequences(3), max_n=3, min_count=2, tokenizer="abc", description="toy")
    datastore.survival = np.linspace(0, 1, 3 * 3 * SHARE_BINS, dtype=np.float32).reshape(3, 3, SHARE_BINS)
    path = str(tmp_path / name)
    datastore.save(path)
    assert (open(path, "rb").read(6) == b"\xfd7zXZ\x00") == name.endswith(".xz")
    loaded = NgramDatastore.load(path, tokenizer="abc")
    assert (loaded.max_n, loaded.tokenizer, loaded.description) == (3, "abc", "toy")
    for array in ("keys", "next_tokens", "confidences", "survival"):
        assert np.array_equal(getattr(loaded, array), getattr(datastore, array))
    with pytest.raises(ValueError, match="built for tokenizer abc"):
        NgramDatastore.load(path, tokenizer="xyz")


def test_a_file_that_is_not_a_datastore_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "weights.safetensors")
    save_file({"keys": np.zeros(2, dtype=np.uint64)}, path)
    with pytest.raises(ValueError, match="is not a specserve-ngram-datastore"):
        NgramDatastore.load(path)


def test_bad_build_arguments_are_refused():
    with pytest.raises(ValueError):
        build_datastore([[1, 2]], max_n=0, min_count=1, tokenizer="t")
    with pytest.raises(ValueError, match="non-negative"):
        build_datastore([[1, -5, 2]], max_n=2, min_count=1, tokenizer="t")


def test_an_empty_corpus_gives_an_empty_datastore_that_drafts_nothing():
    datastore = build_datastore([], max_n=3, min_count=1, tokenizer="t")
    assert len(datastore) == 0 and datastore.continuation([1, 2], 4) == ([], [])


def test_the_fingerprint_follows_the_vocabulary():
    assert tokenizer_fingerprint({"a": 0, "b": 1}) == tokenizer_fingerprint({"b": 1, "a": 0})
    assert tokenizer_fingerprint({"a": 0, "b": 1}) != tokenizer_fingerprint({"a": 1, "b": 0})


def test_auto_serves_the_bundled_datastore_of_the_tokenizer_and_none_for_another(tmp_path, monkeypatch, caplog):
    import engine.spec.datastores as bundled_package
    from engine.spec import datastore as module

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    build_datastore([[1, 2]] * 2, max_n=1, min_count=1, tokenizer="vocab-a").save(str(shipped / "a.safetensors"))
    build_datastore([[3, 4]] * 2, max_n=1, min_count=1, tokenizer="vocab-b").save(str(shipped / "b.safetensors.xz"))
    (shipped / "README.md").write_text("not a datastore")
    monkeypatch.setattr(module.resources, "files", lambda package: shipped)
    assert module.bundled_datastore("vocab-b") == str(shipped / "b.safetensors.xz")  # packed, as shipped
    assert module.resolve_datastore("auto", "vocab-b").lookup([3]) == (4, 1.0)
    with caplog.at_level("INFO", logger="specserve.datastore"):
        assert module.resolve_datastore("auto", "vocab-c") is None
    assert "no bundled n-gram datastore for tokenizer vocab-c" in caplog.text
    assert module.resolve_datastore(None, "vocab-a") is None
    with pytest.raises(ValueError, match="built for tokenizer vocab-a"):
        module.resolve_datastore(str(shipped / "a.safetensors"), "vocab-c")  # a named file must fit
    assert bundled_package.__doc__


@pytest.mark.slow
def test_the_shipped_datastore_is_the_one_auto_serves_the_default_model():
    from gguf import GGUFReader

    from engine.models.default import default_model_path
    from engine.models.gguf_loader import build_tokenizer, read_metadata
    from engine.spec.datastore import bundled_datastore

    backend, _ = build_tokenizer(read_metadata(GGUFReader(default_model_path())))
    shipped = bundled_datastore(tokenizer_fingerprint(backend.get_vocab()))
    assert shipped is not None and shipped.endswith("smollm2.safetensors.xz")
    datastore = NgramDatastore.load(shipped)
    text = backend.encode("I hope this helps! Let me know if", add_special_tokens=False).ids
    assert datastore.continuation(text[:-2], 2)[0] == text[-2:]  # ShareGPT's sign-off is held
    # Its fitted survival map (README): n-gram drafts the better of lookup and datastore.
    assert datastore.survival is not None and datastore.survival.shape[1:] == (datastore.max_n, SHARE_BINS)


def _with_map(datastore: NgramDatastore, table) -> NgramDatastore:
    datastore.survival = np.asarray(table, dtype=np.float32)
    datastore.survival_fit = "by hand"
    return datastore


def test_a_fitted_map_turns_shares_into_survival_rates_by_position_context_and_tenth():
    # After 1: 2 (share 1/2, context [1]) or 5; after 1 2: 3 (share 1, context [1 2]).
    datastore = build_datastore([[1, 2, 3]] * 2 + [[1, 5]] * 2, max_n=2, min_count=2, tokenizer="t")
    assert datastore.chain([1], 3) == [(2, 0.5, 1), (3, 1.0, 2)]  # ties go to the smaller token
    assert datastore.calibrated_continuation([1], 3) == ([2, 3], [0.5, 1.0])  # no map: the shares
    assert datastore.best_expected(4) == float("inf")
    table = np.zeros((2, 2, SHARE_BINS))
    table[0, 0, 5] = 0.3  # position 0, a 1-token context, share 0.5
    table[1, 1, 9] = 0.8  # position 1, a 2-token context, share 1.0
    table[1, 0, 2] = 0.95  # the best rate at position 1 (never drafted here)
    _with_map(datastore, table)
    assert datastore.calibrated_continuation([1], 3) == ([2, 3], [pytest.approx(0.3), pytest.approx(0.8)])
    assert datastore.rate(5, 2, 1.0) == pytest.approx(0.8)  # deeper positions read the last row
    assert share_bin(0.999) == SHARE_BINS - 1 and share_bin(0.1) == 1 and share_bin(0.0999) == 0
    # each position's largest rate; deeper positions read the last row
    assert datastore.best_expected(3) == pytest.approx(0.3 + 0.3 * 0.95 + 0.3 * 0.95 * 0.95)


def test_the_map_and_what_it_was_fitted_on_survive_a_save(tmp_path):
    path = str(tmp_path / "d.safetensors")
    _with_map(build_datastore(random_sequences(4), max_n=3, min_count=2, tokenizer="t"),
              np.full((4, 3, SHARE_BINS), 0.25)).save(path)
    loaded = NgramDatastore.load(path)
    assert loaded.survival.shape == (4, 3, SHARE_BINS) and loaded.survival_fit == "by hand"
    assert loaded.rate(0, 3, 0.9) == loaded.rate(7, 1, 0.1) == 0.25
    build_datastore(random_sequences(4), max_n=3, min_count=2, tokenizer="t").save(path)
    assert NgramDatastore.load(path).survival is None


def test_a_map_of_the_wrong_shape_is_refused_and_a_datastore_without_one_is_logged(tmp_path, caplog):
    from engine.spec import datastore as module

    path = str(tmp_path / "d.safetensors")
    for shape in [(2, SHARE_BINS), (2, 2, SHARE_BINS), (2, 1, 4)]:  # max_n is 1
        _with_map(build_datastore([[1, 2]] * 2, max_n=1, min_count=1, tokenizer="t"), np.zeros(shape)).save(path)
        with pytest.raises(ValueError, match="survival map of shape"):
            NgramDatastore.load(path)
    build_datastore([[1, 2]] * 2, max_n=1, min_count=1, tokenizer="t").save(path)
    with caplog.at_level("WARNING", logger="specserve.datastore"):
        module.resolve_datastore(path, "t")
    assert "no fitted survival map" in caplog.text
