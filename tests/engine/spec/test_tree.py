"""Greedy token trees: drafts with alternative branches, verified side by
side as forks on scratch KV blocks (engine/spec/tree.py)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from engine.config import SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.base import DraftInput
from engine.spec.datastore import SHARE_BINS, build_datastore, tokenizer_fingerprint
from engine.spec.ngram import NgramDrafter, paying_length, with_alternative
from engine.spec.tree import BranchForks, accepted_slots, copy_blocks, copy_slots
from scheduler.drafts import DraftBlock, DraftEconomics
from scheduler.load import StepCostModel
from scheduler.output import ScheduledRequest
from scheduler.request import Request, SamplingParams
from tests.engine.test_speculative import GREEDY, encode_all, make_engine, model_dir, reference  # noqa: F401


def _branching_engine(plain, tmp_path, corpus, **spec_fields) -> LLMEngine:
    """n-gram with a datastore counted on `corpus`, its blocks branching."""
    path = str(tmp_path / "datastore.safetensors")
    fingerprint = tokenizer_fingerprint(plain.tokenizer.backend.get_vocab())
    datastore = build_datastore(corpus, max_n=3, min_count=1, tokenizer=fingerprint)
    # Rates rising with the share: each source is the main block some steps.
    datastore.survival = np.tile(np.linspace(0.05, 0.25, SHARE_BINS, dtype=np.float32), (3, 3, 1))
    datastore.save(path)
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=6, ngram_datastore=path,
                             ngram_alternatives=True, **spec_fields)
    return LLMEngine(dataclasses.replace(plain.config, speculative=spec), loaded=plain.loaded,
                     step_cost=StepCostModel.flat())


@pytest.fixture(scope="module")
def corpus(reference):  # noqa: F811
    """The target's own outputs (drafts that survive) and random text (drafts that do not)."""
    noise = random.Random(0)
    return reference + [[noise.randrange(200) for _ in range(30)] for _ in range(20)]


def test_branching_drafts_equal_plain_decoding_alone_and_batched(model_dir, reference, corpus, tmp_path):  # noqa: F811
    """Alternatives are verified, some win, and the outputs are plain
    decoding's, one request at a time and 18 at once. A win keeps the
    fork's drafts and copies their KV into the request's slots; with a
    wrong copy the next steps read wrong KV and the outputs change."""
    engine = _branching_engine(make_engine(model_dir), tmp_path, corpus)
    prompts = encode_all(engine)
    assert [engine.generate([p], GREEDY)[0] for p in prompts] == reference
    assert engine.generate(prompts * 3, GREEDY) == reference * 3
    stats = engine.snapshot_stats()
    assert stats.num_alternatives > 0 and stats.num_alternative_draft_tokens >= stats.num_alternatives
    assert 0 < stats.num_alternative_wins < stats.num_alternatives
    assert stats.num_alternative_accepted_tokens >= stats.num_alternative_wins
    engine.scheduler.block_manager.check_integrity()


def test_the_policy_calibrates_the_blocks_own_survival_not_an_alternatives(model_dir, reference, corpus,  # noqa: F811
                                                                            tmp_path):
    engine = _branching_engine(make_engine(model_dir), tmp_path, corpus)
    observed, observe = [], engine.verify_policy.observe
    engine.verify_policy.observe = lambda rid, verified, accepted: observed.append(accepted) or observe(
        rid, verified, accepted)
    assert engine.generate(encode_all(engine), GREEDY) == reference
    stats = engine.snapshot_stats()
    assert stats.num_alternative_wins > 0
    # a win emitted more drafts than the request's own block kept
    assert sum(observed) < stats.num_accepted_tokens


def test_scratch_blocks_running_out_drop_branches_and_stay_lossless(model_dir, reference, corpus, tmp_path):  # noqa: F811
    engine = _branching_engine(make_engine(model_dir), tmp_path, corpus)
    engine.runner.forks.num_blocks = 2  # one fork a step at most
    assert engine.generate(encode_all(engine) * 2, GREEDY) == reference * 2
    stats = engine.snapshot_stats()
    assert stats.num_alternatives_dropped > 0 and stats.num_alternative_wins > 0


SEEDED = [SamplingParams(temperature=t, top_k=k, seed=100 + i, max_tokens=24, ignore_eos=True)
          for i, (t, k) in enumerate([(0.3, 0), (0.5, 0), (0.3, 5), (0.7, 0), (0.2, 0), (0.4, 3)])]


def test_seeded_requests_branch_and_emit_what_seeded_plain_decoding_does(model_dir, corpus, tmp_path):  # noqa: F811
    """A seeded row emits the Gumbel-max token of its seed and output
    position whatever was drafted, so a fork's accepted run is exact too.
    Low temperatures: the seeded outputs stay close to the greedy ones the
    datastore was counted on, so branches are accepted and win."""
    plain = make_engine(model_dir)
    prompts = encode_all(plain)
    expected = plain.generate(prompts, SEEDED)
    engine = _branching_engine(plain, tmp_path, corpus)
    assert [engine.generate([p], s)[0] for p, s in zip(prompts, SEEDED)] == expected
    assert engine.generate(prompts, SEEDED) == expected
    stats = engine.snapshot_stats()
    assert stats.num_alternatives > 0 and stats.num_alternative_wins > 0


def test_unseeded_sampled_and_logprob_requests_get_no_alternatives(model_dir, corpus, tmp_path):  # noqa: F811
    engine = _branching_engine(make_engine(model_dir), tmp_path, corpus)
    prompts = encode_all(engine)
    engine.generate(prompts, SamplingParams(temperature=0.3, max_tokens=16, ignore_eos=True))
    engine.generate(prompts, dataclasses.replace(GREEDY, logprobs=2))
    stats = engine.snapshot_stats()
    assert stats.num_drafts > 0 and stats.num_alternatives == 0


def test_alternatives_need_ngram_and_a_datastore(model_dir):  # noqa: F811
    with pytest.raises(ValueError, match="--ngram-alternatives"):
        SpeculativeConfig(method="hybrid", ngram_alternatives=True, draft_model="x")
    with pytest.raises(ValueError, match="datastore"):
        NgramDrafter(alternatives=True)


def test_a_block_refuses_alternatives_it_cannot_carry():
    DraftBlock([1, 2], [0.5, 0.5], alternatives=((3, 4),))
    with pytest.raises(ValueError, match="starts with a token"):
        DraftBlock([1, 2], [0.5, 0.5], alternatives=((1, 4),))
    with pytest.raises(ValueError, match="longer"):
        DraftBlock([1, 2], [0.5, 0.5], alternatives=((3, 4, 5),))
    with pytest.raises(ValueError, match="deterministic"):
        DraftBlock([1], [0.5], probs=torch.ones(1, 4), alternatives=((3,),))


def test_a_prefix_cuts_the_alternatives_and_rows_fit_them_in_order():
    block = DraftBlock([1, 2, 3], [0.5] * 3, alternatives=((4, 5, 6), (7, 8)))
    assert block.num_alternative_rows == 4 + 3
    assert block.prefix(2).alternatives == ((4, 5), (7, 8))
    assert block.prefix(0).alternatives == ()
    assert block.within_alternative_rows(7) is block
    assert block.within_alternative_rows(6).alternatives == ((4, 5, 6), (7,))  # the second cut short
    assert block.within_alternative_rows(5).alternatives == ((4, 5, 6),)  # one row left: not even one draft
    assert block.within_alternative_rows(3).alternatives == ((4, 5),)
    assert block.within_alternative_rows(1).alternatives == ()


def test_an_alternative_is_verified_as_far_as_it_pays():
    confidences = [0.8, 0.5, 0.5, 0.1]
    assert paying_length(confidences, DraftEconomics()) == 4  # idle: every draft
    assert paying_length(confidences, DraftEconomics(first_draft_threshold=0.9)) == 0
    busy = DraftEconomics(accepted_token_seconds=1.0, verify_token_seconds=0.15)
    # survivals 0.8, 0.4, 0.2, 0.02 against 0.15 a row, the anchor's too:
    # worth 0.5, 0.75, 0.8, 0.67 for 1..4 drafts
    assert paying_length(confidences, busy) == 3
    assert paying_length(confidences, DraftEconomics(accepted_token_seconds=1.0, verify_token_seconds=0.5)) == 0


def test_an_alternatives_drafts_are_worth_the_share_of_a_step_they_save_the_request():
    """A request that emits two tokens a step finishes half a step sooner
    per accepted draft: at half the worth a shorter branch pays, at a
    tenth none."""
    confidences = [0.8, 0.5, 0.5, 0.1]
    busy = DraftEconomics(accepted_token_seconds=1.0, verify_token_seconds=0.15)
    # worth 0.4 - 0.3, 0.6 - 0.45, 0.7 - 0.6, 0.71 - 0.75 for 1..4 drafts
    assert paying_length(confidences, busy, steps_saved_per_token=0.5) == 2
    assert paying_length(confidences, busy, steps_saved_per_token=0.1) == 0
    assert paying_length(confidences, DraftEconomics(), steps_saved_per_token=0.1) == 4  # idle: every draft


def test_the_drafter_values_a_branch_by_its_requests_tokens_per_step():
    """NgramDrafter.propose hands with_alternative the request's share of a
    step: the branch a request at a token a step gets is dropped for one
    that speculation already brings ten tokens a step."""
    datastore = build_datastore([[1, 2, 3, 4]] * 3, max_n=2, min_count=2, tokenizer="t")
    busy = DraftEconomics(accepted_token_seconds=1.0, verify_token_seconds=0.15)

    def proposed(accepted: int) -> DraftBlock:
        request = Request("r", [1, 5, 1], SamplingParams(temperature=0.0))
        request.output_token_ids = [9] * 9 + [1]  # lookup: "1" went on with 9; the datastore: with 2
        request.num_accepted_tokens = accepted
        drafter = NgramDrafter(1, 4, datastore=datastore, alternatives=True)
        return drafter.propose([DraftInput(request, 3, torch.Generator(), [], economics=busy)])["r"]

    slow, fast = proposed(0), proposed(9)
    assert slow.alternatives and slow.alternatives[0][0] != slow.token_ids[0]
    assert fast.token_ids == slow.token_ids and fast.alternatives == ()


def test_an_alternative_is_worth_only_what_the_block_leaves_it():
    """The alternative's first draft differs from the block's: it can only
    survive where the block's first draft does not."""
    other = DraftBlock([7, 8], [0.5, 0.9], None, "datastore")
    busy = DraftEconomics(accepted_token_seconds=1.0, verify_token_seconds=0.15)
    confident, unsure = (DraftBlock([4, 5], [c, 0.9], None, "ngram") for c in (0.9, 0.3))
    assert with_alternative(confident, other, busy).alternatives == ()  # 0.1 left: not worth a fork
    assert with_alternative(unsure, other, busy).alternatives == ((7, 8),)
    assert with_alternative(confident, other, DraftEconomics()).alternatives == ((7, 8),)  # idle


def _decode_item(start: int, block_ids: list[int], drafts: DraftBlock, **params) -> ScheduledRequest:
    request = Request("r", list(range(start + 1)), SamplingParams(**({"temperature": 0.0, "max_tokens": 8} | params)))
    return ScheduledRequest(request=request, start_position=start, num_query_tokens=1, block_ids=block_ids,
                            drafts=drafts)


def test_a_fork_shares_the_full_blocks_and_copies_the_anchors_block():
    drafts = DraftBlock([1, 2, 3, 4], [0.5] * 4, alternatives=((5, 6, 7, 8),))
    main = _decode_item(10, [3, 9, 4, 5], drafts)  # block size 4: the anchor sits in block 4, at offset 2
    step = BranchForks(first_block=20, num_blocks=4, block_size=4).expand([main])
    (fork,) = step.forks
    assert fork.item.block_ids == [3, 9, 20, 21]  # positions 10..14 span two scratch blocks
    assert step.partial_copies == [(4, 20)]
    assert fork.item.spec_token_ids == [5, 6, 7, 8] and fork.item.start_position == 10
    assert accepted_slots(main, fork.item, 3, 4) == ([20 * 4 + 3, 21 * 4 + 0, 21 * 4 + 1],
                                                     [4 * 4 + 3, 5 * 4 + 0, 5 * 4 + 1])  # noqa: E226


def test_an_anchor_at_a_block_start_copies_nothing_and_forks_wait_for_blocks():
    drafts = DraftBlock([1, 2], [0.5] * 2, alternatives=((5, 6),))
    at_start = _decode_item(8, [3, 9, 4], drafts)
    step = BranchForks(first_block=20, num_blocks=1, block_size=4).expand([at_start, at_start])
    assert [f.item.block_ids for f in step.forks] == [[3, 9, 20]]
    assert step.partial_copies == [] and step.num_dropped == 1


@pytest.mark.parametrize("params", [{"logprobs": 1}, {"temperature": 0.7}, {"temperature": 0.7, "seed": 5,
                                                                         "logprobs": 0}])
def test_forking_a_request_that_cannot_branch_fails_loudly(params):
    drafts = DraftBlock([1, 2], [0.5] * 2, alternatives=((5, 6),))
    item = _decode_item(8, [3, 9, 4], drafts, **params)
    with pytest.raises(ValueError, match="branch only"):
        BranchForks(first_block=20, num_blocks=4, block_size=4).expand([item])


def test_block_and_slot_copies_move_every_layer():
    caches = [(torch.arange(48.0).view(6, 2, 2, 2), torch.arange(48.0).view(6, 2, 2, 2) + 100) for _ in range(2)]
    copy_blocks(caches, [(1, 4)])
    copy_slots(caches, [0], [11])  # slot 0 (block 0, offset 0) to slot 11 (block 5, offset 1)
    for keys, values in caches:
        assert torch.equal(keys[4], keys[1]) and torch.equal(values[4], values[1])
        assert torch.equal(keys[5, 1], keys[0, 0]) and torch.equal(values[5, 1], values[0, 0])
        assert not torch.equal(keys[5, 0], keys[0, 0])
