"""Cached target features: shards round-trip and resume, and
conversations train only on the assistant's turns (the teacher-forced
pass itself: test_prefill.py)."""
from __future__ import annotations

import pytest
import torch

from engine.spec.training import features as features_module
from engine.spec.training.data import Conversation
from engine.spec.training.features import collect_features, load_features
from engine.spec.training.generate import conversation_sample


def test_shards_round_trip(tiny_target, samples, feature_set):
    assert len(feature_set) == len(samples)
    assert feature_set.num_tokens == sum(len(s.tokens) for s in samples)
    assert feature_set.num_trainable_tokens == sum(len(s.response_ids) for s in samples)
    seq, sample = feature_set.sequence(2), samples[2]
    assert seq.id == sample.id and seq.tokens.tolist() == sample.tokens and not seq.relabel
    assert seq.aux.shape == (len(sample.tokens), 3 * tiny_target.config.hidden_size)
    assert seq.aux.dtype == torch.float16 and seq.topk_ids.shape == (len(sample.tokens), 20)
    assert seq.trainable.tolist() == [False] * len(sample.prompt_ids) + [True] * len(sample.response_ids)
    assert seq.first_trainable == len(sample.prompt_ids)
    # The cached top-1 is the target's greedy choice: its own greedy response.
    start = len(sample.prompt_ids)
    assert seq.topk_ids[start - 1:-1, 0].tolist() == sample.response_ids
    two = feature_set.select_layers((3, 1))
    h = tiny_target.config.hidden_size
    assert torch.equal(two.sequence(2).aux, torch.cat([seq.aux[:, 2 * h:], seq.aux[:, :h]], 1))
    assert torch.equal(two.select_layers((1,)).sequence(2).aux, seq.aux[:, :h])


def test_features_are_reused_and_resume_after_the_last_shard(tiny_target, samples, feature_set, feature_dir,
                                                             tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "teacher_forced_states", lambda *a, **k: pytest.fail("recomputed"))
    again = collect_features(tiny_target, samples, (1, 2, 3), feature_dir, progress=False)
    assert torch.equal(again.sequence(5).aux, feature_set.sequence(5).aux)
    monkeypatch.undo()
    # Interrupted after the first shards: a rerun computes only the rest.
    calls = []
    real = features_module.teacher_forced_states

    def counting(model, sequences, *rest):
        calls.append(len(sequences))
        if sum(calls) > 8:
            raise KeyboardInterrupt
        return real(model, sequences, *rest)

    monkeypatch.setattr(features_module, "teacher_forced_states", counting)
    out = str(tmp_path / "features")
    with pytest.raises(KeyboardInterrupt):
        collect_features(tiny_target, samples, (1, 2, 3), out, batch_tokens=60, shard_tokens=100, progress=False)
    done = len(load_features(out))
    assert 0 < done < len(samples)
    calls.clear()
    monkeypatch.setattr(features_module, "teacher_forced_states", real)
    resumed = collect_features(tiny_target, samples, (1, 2, 3), out, batch_tokens=60, shard_tokens=100,
                               progress=False)
    assert resumed.ids == feature_set.ids
    for i in (0, done, len(samples) - 1):
        torch.testing.assert_close(resumed.sequence(i).aux.float(), feature_set.sequence(i).aux.float(),
                                   atol=2e-3, rtol=2e-3)


def test_a_complete_cache_grows_when_more_sequences_follow(tiny_target, samples, feature_set, tmp_path,
                                                          monkeypatch):
    """The first sequences cached, then all of them asked for: only the
    new ones are computed and the cache ends equal to one made at once; a
    list that does not start with the cached sequences starts over."""
    out = str(tmp_path / "features")
    collect_features(tiny_target, samples[:3], (1, 2, 3), out, progress=False)
    computed = []
    real = features_module.teacher_forced_states
    monkeypatch.setattr(features_module, "teacher_forced_states",
                        lambda model, sequences, *rest: computed.extend(sequences) or real(model, sequences, *rest))
    grown = collect_features(tiny_target, samples, (1, 2, 3), out, progress=False)
    assert computed == [s.tokens for s in samples[3:]]
    assert grown.ids == feature_set.ids
    torch.testing.assert_close(grown.sequence(len(samples) - 1).aux.float(),
                               feature_set.sequence(len(samples) - 1).aux.float(), atol=2e-3, rtol=2e-3)
    computed.clear()
    collect_features(tiny_target, samples, (1, 2, 3), out, progress=False)
    assert computed == []  # complete again: reused as it is
    other = samples[1:]
    collect_features(tiny_target, other, (1, 2, 3), out, progress=False)
    assert computed == [s.tokens for s in other]


def test_conversation_trains_on_assistant_turns_only(tiny_target):
    tok = tiny_target.tokenizer
    messages = [{"role": "user", "content": "Hello there fox"}, {"role": "assistant", "content": "Hi, the dog."},
                {"role": "user", "content": "More please"}, {"role": "assistant", "content": "The quick fox."}]
    sample = conversation_sample(tok, Conversation("sharegpt/x", messages), max_len=1000)
    assert sample.tokens == tok.encode(tok.apply_chat_template(messages, add_generation_prompt=False))
    assert sample.kind == "dataset" and len(sample.spans()) == 2
    trained = [tok.decode(sample.tokens[a:b], skip_special_tokens=False) for a, b in sample.spans()]
    # The message as the template renders it: content, end-of-turn marker, newline.
    assert trained == ["Hi, the dog.<|im_end|>\n", "The quick fox.<|im_end|>\n"]
    cut = conversation_sample(tok, Conversation("sharegpt/x", messages), max_len=sample.spans()[1][0] + 2)
    assert cut.spans() == [sample.spans()[0], (sample.spans()[1][0], sample.spans()[1][0] + 2)]
    assert conversation_sample(tok, Conversation("sharegpt/x", messages), max_len=3) is None


def test_sets_of_several_directories_concatenate(feature_set):
    first, second = feature_set.subset([0, 1]), feature_set.subset([5])
    joined = type(feature_set).concat([first, second])
    assert joined.ids == [feature_set.ids[i] for i in (0, 1, 5)]
    assert torch.equal(joined.sequence(2).aux, feature_set.sequence(5).aux)
    with pytest.raises(ValueError, match="same aux layers"):
        type(feature_set).concat([first, second.select_layers((1,))])


def test_features_run_on_batch_free_kernels_and_the_served_mode_comes_back(tiny_dir, samples, tmp_path,
                                                                           monkeypatch):
    """Training features need no batch invariance, so the pass takes the
    faster free kernels; the model (shared with the engine that regenerated
    the responses) is batch-invariant again afterwards."""
    from engine.models.loader import load_model

    target = load_model(tiny_dir)
    assert target.model.batch_invariant
    modes, real_pass = [], features_module.teacher_forced_states

    def recording_pass(model, *args, **kwargs):
        modes.append(model.batch_invariant)
        return real_pass(model, *args, **kwargs)

    monkeypatch.setattr(features_module, "teacher_forced_states", recording_pass)
    collect_features(target, samples[:6], (1, 2, 3), str(tmp_path / "f"), batch_tokens=64, progress=False)
    assert modes and not any(modes)
    assert target.model.batch_invariant


def test_a_sequence_s_tokens_read_alone_are_the_whole_read_s(feature_set):
    for i in range(len(feature_set)):
        tokens, first_trained = feature_set.tokens(i)
        whole = feature_set.sequence(i)
        assert torch.equal(tokens, whole.tokens) and first_trained == whole.first_trainable
