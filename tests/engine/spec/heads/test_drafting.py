"""Per-request drafting state and the draft batch (engine/spec/heads/drafting.py),
with the sampler helpers it and the engine share."""
from __future__ import annotations

import pytest
import torch

from engine.sampler import DRAFT_SEED_OFFSET, RowContext, draft_generator, make_generator
from engine.spec.base import DraftInput
from engine.spec.heads.drafting import CompactLogits, DraftBatch, GrowingKV, RequestState, scale_confidence
from scheduler.request import Request, SamplingParams


def test_growing_kv_keeps_every_entry_across_regrowth():
    cache = GrowingKV(torch.zeros(1, 2, 3))
    pieces = [torch.randn(n, 2, 3) for n in (5, 70, 1, 200)]
    for piece in pieces:
        cache.append(piece, -piece)
    keys, values = cache.view()
    assert torch.equal(keys, torch.cat(pieces)) and torch.equal(values, -torch.cat(pieces))


def test_row_context_counts_earlier_drafts_as_output():
    params = SamplingParams(temperature=1.0, repetition_penalty=1.5)
    request = Request("r", [1, 2, 3], params)
    request.output_token_ids = [4]
    assert RowContext.for_request(request, [7, 8]) == RowContext(params, [1, 2, 3], [4, 7, 8])
    assert request.output_token_ids == [4]  # the request itself is untouched
    batch = DraftBatch([DraftInput(request, 3, torch.Generator(), [])], [RequestState()])
    batch.tokens[0] = [9]
    assert batch.row_contexts() == [RowContext(params, [1, 2, 3], [4, 9])]


def test_batch_samples_under_each_requests_transforms_and_caps_its_drafts():
    greedy = Request("g", [1], SamplingParams(temperature=0.0))
    top1 = Request("t", [1], SamplingParams(temperature=1.0, top_k=1))
    items = [DraftInput(greedy, 1, torch.Generator(), []), DraftInput(top1, 2, torch.Generator(), [])]
    batch = DraftBatch(items, [RequestState(), RequestState()], calibration=[1.0, 2.0])
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    for k in range(2):
        assert batch.sample(k, logits, None).tolist() == [1, 0]
    proposals = batch.proposals()
    assert proposals["g"].token_ids == [1] and proposals["t"].token_ids == [0, 0]
    raw = torch.softmax(logits[1], -1)[0].item()
    assert proposals["t"].confidences == pytest.approx([raw, scale_confidence(raw, 2.0)])
    torch.testing.assert_close(proposals["t"].probs, torch.tensor([[1.0, 0.0, 0.0]] * 2))
    # Each block carries the peaks of the head's raw distributions (not of the transformed ones).
    assert proposals["t"].peaks == pytest.approx([raw, raw])
    assert proposals["g"].peaks == pytest.approx([torch.softmax(logits[0], -1).max().item()])


def test_a_peak_map_calibration_reads_the_peak_beside_the_confidence_head():
    """With a confidence head, an entry {"confidence", "peak", "bias"} maps
    the head's confidence and the distribution's peak together."""
    request = Request("r", [1], SamplingParams(temperature=1.0))
    entry = {"confidence": 0.5, "peak": 1.5, "bias": -0.25}
    batch = DraftBatch([DraftInput(request, 1, torch.Generator(), [])], [RequestState()], calibration=[entry])
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    batch.sample(0, logits, torch.tensor([0.3]))
    peak = torch.softmax(logits[0], -1).max().item()
    block = batch.proposals()["r"]
    assert block.peaks == pytest.approx([peak])
    assert block.confidences == pytest.approx([scale_confidence(0.3, entry, peak)])
    assert block.confidences[0] != pytest.approx(scale_confidence(0.3, entry, 0.3))  # not the confidence twice


def test_scale_confidence():
    assert scale_confidence(0.8, 1.0) == pytest.approx(0.8)
    assert 0.5 < scale_confidence(0.8, 3.0) < 0.8 < scale_confidence(0.8, 0.5)
    assert 0 < scale_confidence(0.0, 2.0) < scale_confidence(1.0, 2.0) < 1


def test_draft_generator_is_offset_from_the_sampling_seed():
    assert torch.equal(torch.rand(4, generator=draft_generator(5)),
                       torch.rand(4, generator=make_generator(5 + DRAFT_SEED_OFFSET)))
    assert not torch.equal(torch.rand(4, generator=draft_generator(5)), torch.rand(4, generator=make_generator(5)))
    assert not torch.equal(torch.rand(4, generator=draft_generator(None)),
                           torch.rand(4, generator=draft_generator(None)))


def test_compact_logits_argmax_breaks_ties_by_target_id_as_the_full_argmax_does():
    ids = torch.tensor([7, 2, 5, 0])  # a draft vocabulary in frequency order, not id order
    compact = CompactLogits(torch.tensor([[1.0, 3.0, 3.0, 0.0], [4.0, 1.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]]), ids, 9)
    full = compact.expand()
    assert full.shape == (3, 9) and torch.isinf(full[:, [1, 3, 4, 6, 8]]).all()
    assert compact.first_argmax().tolist() == full.argmax(dim=-1).tolist() == [2, 0, 0]


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0),
                                    SamplingParams(temperature=0.0, repetition_penalty=2.0),
                                    SamplingParams(temperature=0.0, logit_bias=[(2, 5.0)]),
                                    SamplingParams(temperature=0.8, seed=3)],
                         ids=["greedy", "greedy-penalised", "greedy-logit-bias", "seeded"])
def test_a_batch_drafts_the_same_from_compact_logits_as_from_expanded_ones(params):
    """Plain greedy rows skip the full-vocabulary passes; every row must
    still get the tokens, distributions, confidences and peaks the
    expanded logits give (tokens and distributions exactly)."""
    ids = torch.tensor([11, 2, 7, 5, 0, 9])
    generator = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(3):
        logits = torch.randn(2, 6, generator=generator).round().abs()
        logits[:, 2] = logits.amax(dim=-1) + 0.5  # token 7, seen in the prompt: a penalty moves the argmax
        steps.append(CompactLogits(logits, ids, 12))
    blocks = []
    for expand in (False, True):
        requests = [Request(f"r{i}", [2, 7, 7], params) for i in range(2)]
        batch = DraftBatch([DraftInput(r, 3, torch.Generator().manual_seed(1), []) for r in requests],
                           [RequestState(), RequestState()])
        for k, logits in enumerate(steps):
            batch.sample(k, logits.expand() if expand else logits, None)
        blocks.append(batch.proposals())
    for rid in ("r0", "r1"):
        compact, full = blocks[0][rid], blocks[1][rid]
        assert compact.token_ids == full.token_ids
        assert torch.equal(compact.probs, full.probs)
        # The softmax sums its terms in another order without the -inf ones: rounding only.
        assert compact.confidences == pytest.approx(full.confidences, rel=1e-6)
        assert compact.peaks == pytest.approx(full.peaks, rel=1e-6)
