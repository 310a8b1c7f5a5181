"""The speculative acceptance contract as a plain per-request loop: the
test oracle of engine/spec/rejection.py (same arguments, same random draws).
"""
from __future__ import annotations

import torch

from engine.spec.rejection import AcceptanceResult, _accept, _residual, _sample_inverse_cdf, _uniforms


def rejection_sample_reference(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    num_draft: list[int],
    generators: list[torch.Generator],
) -> AcceptanceResult:
    """The contract as a plain per-request loop: the test oracle.

    Same arguments and shapes as `rejection_sample`, same random draws.
    """
    emitted, num_accepted = [], []
    draft_start = row_start = 0
    for n, generator in zip(num_draft, generators):
        drafts = draft_token_ids[draft_start: draft_start + n].tolist()
        p_t = target_probs[row_start: row_start + n + 1]
        if _all_one_hot(p_t):
            tokens = _greedy_request(drafts, p_t)
        else:
            p_d = _draft_rows(drafts, draft_probs, draft_start, p_t)
            uniforms = _uniforms(n + 1, generator, p_t.device)
            tokens = _sampled_request(drafts, p_d, p_t, uniforms)
        emitted.append(tokens)
        num_accepted.append(len(tokens) - 1)
        draft_start, row_start = draft_start + n, row_start + n + 1
    return AcceptanceResult(emitted, num_accepted)


# --- reference implementation ---------------------------------------------------

def _all_one_hot(p_t: torch.Tensor) -> bool:
    """p_t: [n + 1, V]. True when every row has exactly one token of nonzero probability."""
    return bool(((p_t > 0).sum(dim=-1) == 1).all())


def _greedy_request(drafts: list[int], p_t: torch.Tensor) -> list[int]:
    """p_t: [n + 1, V] one-hot rows. Accept while the draft is the argmax, then emit the argmax."""
    tokens = []
    for k, draft in enumerate(drafts):
        best = int(p_t[k].argmax())
        tokens.append(best)
        if draft != best:
            return tokens
    tokens.append(int(p_t[len(drafts)].argmax()))
    return tokens


def _draft_rows(drafts: list[int], draft_probs, draft_start: int, p_t: torch.Tensor) -> torch.Tensor:
    """One request's draft distributions: [n, V] (one-hot at the drafts when draft_probs is None)."""
    n = len(drafts)
    if draft_probs is not None:
        return draft_probs[draft_start: draft_start + n]
    one_hot = torch.zeros(n, p_t.shape[1], dtype=p_t.dtype, device=p_t.device)
    one_hot[torch.arange(n), drafts] = 1.0
    return one_hot


def _sampled_request(drafts: list[int], p_d: torch.Tensor, p_t: torch.Tensor,
                     uniforms: torch.Tensor) -> list[int]:
    """p_d: [n, V]; p_t: [n + 1, V]; uniforms: [n + 1]. The contract, one position at a time."""
    tokens = []
    last = uniforms[len(drafts): len(drafts) + 1]
    for k, draft in enumerate(drafts):
        if _accept(uniforms[k: k + 1], p_t[k, draft: draft + 1], p_d[k, draft: draft + 1]):
            tokens.append(draft)
            continue
        recovered = _sample_inverse_cdf(_residual(p_t[k: k + 1], p_d[k: k + 1]), last)
        return tokens + [int(recovered)]
    bonus = _sample_inverse_cdf(p_t[len(drafts): len(drafts) + 1], last)
    return tokens + [int(bonus)]
