"""How a drafter draws one draft token from its (transformed) distribution.

The draw follows the request's own rule, so drafts agree with what the
target will emit as often as possible:
- greedy: the argmax;
- seeded: the Gumbel-max token with the request's own noise at the output
  position the draft stands for (engine/gumbel.py), the same noise the
  target's verification uses there, so draft and target are coupled;
- otherwise a sample from the request's draft generator (then rejection
  sampling corrects for the draft distribution).
"""
from __future__ import annotations

import torch

from engine.gumbel import seeded_tokens
from engine.spec.base import DraftInput
from kernels.to_device import to_device


def draw_drafts(probs: torch.Tensor, inputs: list[DraftInput], num_drafted: list[int]) -> torch.Tensor:
    """probs [R, V]: row i is the distribution of inputs[i]'s next draft,
    which follows num_drafted[i] earlier drafts. Returns one token per row,
    [R] long on probs' device (nothing is read back to the host)."""
    tokens = probs.argmax(dim=-1)
    seeded = [i for i, item in enumerate(inputs)
              if not item.request.sampling_params.greedy and item.request.sampling_params.seed is not None]
    if seeded:
        index = to_device(seeded, device=probs.device)
        tokens[index] = seeded_tokens(probs[index], [inputs[i].request.sampling_params.seed for i in seeded],
                                      [inputs[i].request.num_output_tokens + num_drafted[i] for i in seeded])
    for i, item in enumerate(inputs):
        params = item.request.sampling_params
        if not params.greedy and params.seed is None:
            tokens[i] = torch.multinomial(probs[i], 1, generator=item.generator)[0]
    return tokens


# --- the grammar of requests with a response_format -----------------------------
# A drafter that samples from q masks q with the request's grammar at every
# position (RowContext.allowed), walking the grammar through its own drafts,
# so it never draws a token the target's masked row gives probability 0
# (engine/structured/outputs.py explains why that keeps sampling lossless).

def begin_grammars(inputs: list[DraftInput]) -> None:
    """Put each constrained request's matcher after its output."""
    for item in inputs:
        if item.grammar is not None:
            item.grammar.begin_drafting(item.request.output_token_ids)


def grammar_mask(item: DraftInput) -> torch.Tensor | None:
    """[V] bool: what the grammar allows at the request's next draft, or None."""
    return None if item.grammar is None else item.grammar.allowed()


def walk_grammar(item: DraftInput, token: int) -> None:
    """The request drafted `token`: its next mask follows it."""
    if item.grammar is not None:
        item.grammar.advance(token)


def end_grammars(inputs: list[DraftInput]) -> None:
    """Roll each matcher back to the request's output (drafts are unverified)."""
    for item in inputs:
        if item.grammar is not None:
            item.grammar.end_drafting()
