"""engine/spec/training/prefill.py: the packed teacher-forced pass gives
each sequence's aux states and top-k next-token distribution as the
serving forward computes them alone."""
from __future__ import annotations

import torch

from engine.spec.training import prefill
from engine.spec.training.prefill import teacher_forced_states
from tests.engine.spec.conftest import random_sequence, target_features


def test_teacher_forced_pass_matches_the_serving_forward(tiny_target):
    """Several packed sequences in one pass give each one's aux states and
    top-k distribution as the serving forward computes them alone."""
    sequences = [random_sequence(40, seed=1), random_sequence(17, seed=2), random_sequence(33, seed=3)]
    states = teacher_forced_states(tiny_target.model, [s.tolist() for s in sequences], (1, 3), top_k=5)
    assert len(states) == len(sequences)
    for seq, state in zip(sequences, states):
        aux, final = target_features(tiny_target, seq, (1, 3))
        assert state.aux.shape == (len(seq), 2 * tiny_target.config.hidden_size)
        torch.testing.assert_close(state.aux, aux, atol=1e-4, rtol=1e-4)
        logprobs = torch.log_softmax(tiny_target.model.compute_logits(final), -1)
        top = logprobs.topk(5, -1)
        assert state.topk_ids.shape == (len(seq), 5) and state.topk_logprobs.dtype == torch.float32
        torch.testing.assert_close(state.topk_logprobs, top.values, atol=1e-4, rtol=1e-4)
        assert torch.equal(state.topk_ids[:, 0], top.indices[:, 0])


def test_aux_layers_come_in_the_order_asked(tiny_target):
    tokens = random_sequence(12, seed=4).tolist()
    (ordered,) = teacher_forced_states(tiny_target.model, [tokens], (1, 3), top_k=2)
    (swapped,) = teacher_forced_states(tiny_target.model, [tokens], (3, 1), top_k=2)
    h = tiny_target.config.hidden_size
    assert torch.equal(swapped.aux, torch.cat([ordered.aux[:, h:], ordered.aux[:, :h]], -1))


def test_top_k_in_chunks_equals_top_k_at_once(tiny_target):
    """The logits are computed a few rows at a time; the chunking must not
    change the result."""
    final = torch.randn(23, tiny_target.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = prefill._top_k(tiny_target.model, final, 4, rows_per_call=512)
        chunked = prefill._top_k(tiny_target.model, final, 4, rows_per_call=5)
        expected = torch.log_softmax(tiny_target.model.compute_logits(final), -1).topk(4, -1)
    for got in (whole, chunked):
        torch.testing.assert_close(got[0], expected.values)
        assert torch.equal(got[1], expected.indices)
