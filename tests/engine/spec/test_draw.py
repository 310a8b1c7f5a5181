"""engine/spec/draw.py: a draft is drawn by its request's own rule."""
from __future__ import annotations

import torch

from engine.gumbel import seeded_tokens
from engine.spec.base import DraftInput
from engine.spec.draw import draw_drafts
from scheduler.request import Request, SamplingParams


def item(params, request_id="r", seed=0):
    request = Request(request_id, [1, 2], params)
    request.append_output_token(3)
    return DraftInput(request, 4, torch.Generator().manual_seed(seed), [])


def test_greedy_takes_the_argmax_and_seeded_uses_the_target_s_noise():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    greedy, seeded = item(SamplingParams(temperature=0.0)), item(SamplingParams(seed=42))
    tokens = draw_drafts(probs, [greedy, seeded], num_drafted=[0, 2])
    assert tokens[0] == 1
    # The noise of output position 1 (one output so far) + 2 drafts before this one.
    assert tokens[1] == seeded_tokens(probs[1:], [42], [3]).item()


def test_unseeded_sampling_follows_the_distribution_with_the_request_s_generator():
    probs = torch.tensor([[0.0, 0.25, 0.75]])
    draws = [draw_drafts(probs, [item(SamplingParams(), seed=s)], [0])[0] for s in range(2000)]
    assert 0 not in draws and abs(draws.count(2) / 2000 - 0.75) < 0.04
    assert draw_drafts(probs, [item(SamplingParams(), seed=5)], [0]) == \
        draw_drafts(probs, [item(SamplingParams(), seed=5)], [0])
