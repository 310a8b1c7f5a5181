"""Draft vocabularies: chosen from the target's choices, stored in the
checkpoint, and served as full-vocabulary distributions that are exactly
zero off the vocabulary (so rejection sampling stays exact)."""
from __future__ import annotations

import pytest
import torch

from engine.spec.base import DraftInput
from engine.spec.head_drafter import HeadDrafter
from engine.spec.heads.checkpoint import load_head, save_head
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS
from engine.spec.training.recipes import build_head
from engine.spec.training.vocab import checkpoint_draft_vocabulary, coverage, draft_vocabulary, target_choice_counts
from scheduler.request import Request, SamplingParams
from tests.engine.spec.conftest import random_sequence, split, target_features
from tests.engine.spec.test_head_drafter import make_engine

VOCAB = 96


def vocab_head(loaded, method, ids, block_size=4, seed=0):
    torch.manual_seed(seed)
    config = HeadConfig.for_target(method, loaded.config, block_size=block_size, draft_vocab_size=len(ids))
    head = build_head(config, loaded.model)
    head.set_draft_vocab(ids)
    return head


@pytest.fixture(scope="module")
def ids(feature_set, tiny_target):
    train, _ = split(feature_set)
    return draft_vocabulary(target_choice_counts(train, tiny_target.config.vocab_size), VOCAB)


def test_vocabulary_is_the_targets_most_frequent_choices(feature_set, tiny_target, ids):
    train, held = split(feature_set)
    counts = target_choice_counts(train, tiny_target.config.vocab_size)
    assert int(counts.sum()) == sum(int(train.sequence(i).trainable[1:].sum()) for i in range(len(train)))
    assert ids.tolist() == sorted(ids.tolist()) and ids.unique().numel() == VOCAB
    outside = torch.ones_like(counts, dtype=torch.bool)
    outside[ids] = False
    assert int(counts[ids].min()) >= int(counts[outside].max())
    assert coverage(train, ids, tiny_target.config.vocab_size) > coverage(train, ids[:10], tiny_target.config.vocab_size)
    everything = torch.arange(tiny_target.config.vocab_size)
    assert coverage(held, everything, tiny_target.config.vocab_size) == 1.0


def test_cached_counts_follow_the_features_they_count(tiny_target, samples, tmp_path):
    """The counts cached in a feature directory are counted again once the
    directory grows (or was computed anew), never read stale."""
    from engine.spec.training.features import collect_features
    from engine.spec.training.vocab import cached_choice_counts

    out, size = str(tmp_path / "features"), tiny_target.config.vocab_size
    first = collect_features(tiny_target, samples[:3], (1, 2, 3), out, progress=False)
    assert torch.equal(cached_choice_counts([out], size), target_choice_counts(first, size))
    grown = collect_features(tiny_target, samples, (1, 2, 3), out, progress=False)
    assert not torch.equal(target_choice_counts(grown, size), target_choice_counts(first, size))
    assert torch.equal(cached_choice_counts([out], size), target_choice_counts(grown, size))


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_draft_distributions_are_full_vocabulary_and_zero_off_it(tiny_target, ids, method):
    head = vocab_head(tiny_target, method, ids)
    tokens = random_sequence(30, seed=4)
    feats, _ = target_features(tiny_target, tokens, head.config.aux_layers)
    drafter = HeadDrafter(head)
    inputs = []
    for i, params in enumerate([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0),
                                SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.2)]):
        request = Request(f"r{i}", tokens[: 12 + i].tolist(), params)
        request.num_computed_tokens = 11 + i
        drafter.absorb(request, feats[: 11 + i])
        inputs.append(DraftInput(request, 4, torch.Generator().manual_seed(i), []))
    off = torch.ones(tiny_target.config.vocab_size, dtype=torch.bool)
    off[ids] = False
    for proposal in drafter.propose(inputs).values():
        assert proposal.probs.shape == (4, tiny_target.config.vocab_size)
        torch.testing.assert_close(proposal.probs.sum(-1), torch.ones(4))
        assert (proposal.probs[:, off] == 0).all()
        assert set(proposal.token_ids) <= set(ids.tolist())


def test_vocabulary_survives_the_checkpoint(tmp_path, tiny_target, ids):
    head = vocab_head(tiny_target, "dspark", ids)
    size = save_head(head, str(tmp_path / "ckpt"))
    loaded = load_head(str(tmp_path / "ckpt"), tiny_target.model)
    assert torch.equal(loaded.draft_ids, ids)  # stored exactly (not as float16)
    assert loaded.markov_out.shape == (head.config.markov_rank, VOCAB)
    assert loaded.markov_in.weight.shape[0] == VOCAB + 1  # + one row for tokens outside
    hidden = torch.randn(3, tiny_target.config.hidden_size)
    torch.testing.assert_close(loaded.logits(hidden), head.logits(hidden).half().float(), atol=2e-2, rtol=2e-2)
    full = build_head(HeadConfig.for_target("dspark", tiny_target.config, block_size=4), tiny_target.model)
    assert size < save_head(full, str(tmp_path / "full"))
    with pytest.raises(ValueError, match="distinct"):
        head.set_draft_vocab(torch.zeros(VOCAB, dtype=torch.long))


def test_a_continuation_reads_the_checkpoints_vocabulary(tmp_path, tiny_target, ids):
    save_head(vocab_head(tiny_target, "dspark", ids), str(tmp_path / "ckpt"))
    assert torch.equal(checkpoint_draft_vocabulary(str(tmp_path / "ckpt"), VOCAB), ids)
    with pytest.raises(ValueError, match=f"drafts over {VOCAB} tokens, not --draft-vocab 40"):
        checkpoint_draft_vocabulary(str(tmp_path / "ckpt"), 40)
    full = build_head(HeadConfig.for_target("dspark", tiny_target.config, block_size=4), tiny_target.model)
    save_head(full, str(tmp_path / "full"))
    with pytest.raises(ValueError, match="has no draft vocabulary"):
        checkpoint_draft_vocabulary(str(tmp_path / "full"), VOCAB)


def test_outside_tokens_map_past_the_end(tiny_target, ids):
    head = vocab_head(tiny_target, "dspark", ids)
    outside = next(t for t in range(tiny_target.config.vocab_size) if t not in set(ids.tolist()))
    mapped = head.to_draft_ids(torch.tensor([int(ids[5]), outside]))
    assert mapped.tolist() == [5, VOCAB]
    expanded = head.expand_logits(torch.arange(VOCAB, dtype=torch.float32)[None])
    assert expanded[0, ids[7]] == 7 and expanded[0, outside] == float("-inf")


def test_greedy_with_a_draft_vocabulary_equals_plain_decoding(tiny_dir, tiny_target, ids):
    plain_engine = make_engine(tiny_dir)
    prompts = [plain_engine.tokenizer.encode(p) for p in ["Hello there", "The quick brown fox jumps"]]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    plain = plain_engine.generate(prompts, params)
    drafter = HeadDrafter(vocab_head(plain_engine.loaded, "eagle3", ids, block_size=5))
    engine = make_engine(tiny_dir, plain_engine.loaded, drafter)
    assert engine.generate(prompts, params) == plain
    assert engine.stats.num_draft_tokens > 0
