"""Speculative acceptance (rejection sampling) over a packed batch of requests.

The contract (design/speculation.md, section 1): for each request, left to
right, accept draft x_k with probability min(1, p_t,k(x_k) / p_d,k(x_k)); at
the first rejection emit a "recovered" token sampled from
normalize(max(0, p_t,k - p_d,k)) and stop; if every draft survives, emit a
"bonus" token sampled from the row after the last draft. The emitted stream
then has exactly the target's distribution.

Randomness. Request r draws `num_draft[r] + 1` uniforms from its own
generator, in one call: uniform k decides draft k, the last one samples the
recovered or bonus token (by inverse CDF). Both implementations below use the
same draws in the same way (the reference is in rejection_reference.py), so
on CPU they return identical tokens for the
same seeds. A request whose target rows are all one-hot (greedy, or a filter
that left one token) draws nothing: its result does not depend on
randomness, and with a one-hot target the rule above is exactly greedy
matching (accept while the draft is the argmax, then emit the argmax).

Seeded requests take another rule (`verify_drafts` dispatches): the
Gumbel-max rule of engine/gumbel.py, under which every row emits the token
argmax(log p_t + g) with noise keyed by (seed, output position, token). A
draft is accepted iff it equals its row's token, the first mismatch emits
that token, and after all accepted drafts the bonus row's token follows.
Each emitted token is then exactly what plain decoding with the same seed
emits at that position, whatever was drafted or verified.

Degenerate residual. max(0, p_t - p_d) sums to the probability of rejecting
at that position; if it is all zero then p_t == p_d and a rejection happens
with probability zero in exact arithmetic, so what we emit there cannot
change the output distribution. Floating-point rounding can still reach that
branch; we then sample p_t, the closest correct answer, instead of dividing
by zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.gumbel import seeded_tokens
from kernels.to_device import to_device


@dataclass
class AcceptanceResult:
    """Outcome of one verification step, per request in batch order."""

    emitted_token_ids: list[list[int]]  # accepted drafts, then one recovered or bonus token
    num_accepted: list[int]             # how many drafts survived


@dataclass
class DeviceAcceptance:
    """The same outcome still on the device (no host sync yet): a request's
    emitted tokens are its first num_accepted drafts, then its final token."""

    num_accepted: torch.Tensor  # [R] long
    final_tokens: torch.Tensor  # [R] long, the recovered or bonus token

    def to_result(self, draft_token_ids: list[int], num_draft: list[int]) -> AcceptanceResult:
        """Host lists, in one device->host transfer."""
        accepted, final = torch.stack([self.num_accepted, self.final_tokens]).tolist()
        return _assemble(draft_token_ids, accepted, final, num_draft)


def rejection_sample(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    num_draft: list[int],
    generators: list[torch.Generator],
) -> AcceptanceResult:
    """Vectorised speculative acceptance for all requests at once.

    draft_token_ids: [D] long, the drafts of all requests concatenated.
    draft_probs: [D, V] draft distribution at each draft position, or None
        for a deterministic drafter (p_d one-hot at the draft, e.g. n-gram).
    target_probs: [D + R, V] from sampler.target_probs(): per request, its
        num_draft[r] verify rows then 1 bonus row, requests in order.
    num_draft: [R] drafts per request (0 = plain sampling of the bonus row).
    generators: [R] per-request generators; request r uses only generators[r].
    """
    return rejection_sample_on_device(draft_token_ids, draft_probs, target_probs, num_draft,
                                      generators).to_result(draft_token_ids.tolist(), num_draft)


def rejection_sample_on_device(draft_token_ids, draft_probs, target_probs, num_draft: list[int],
                               generators: list[torch.Generator],
                               needs_draws: list[bool] | None = None) -> DeviceAcceptance:
    """`rejection_sample` without the host transfer. needs_draws[r] (known
    on the host, e.g. "not greedy") says whether request r draws its
    uniforms; None decides from target_probs, which costs a device sync. A
    request whose rows are all one-hot gets the same tokens either way."""
    layout = _Layout(num_draft, target_probs.device)
    _check_shapes(draft_token_ids, draft_probs, target_probs, layout, generators)
    drafts = draft_token_ids.to(target_probs.device)
    if needs_draws is None:
        needs_draws = _spread_requests(target_probs, layout)
    uniforms = _draw_uniforms(target_probs, layout, generators, needs_draws)
    p_t_x = target_probs[layout.verify_rows, drafts]
    p_d_x = _draft_prob_of_drafts(drafts, draft_probs)
    accepted = _accept(uniforms[layout.verify_rows], p_t_x, p_d_x)
    num_accepted = _count_leading_accepts(accepted, layout)
    final_tokens = _sample_final_tokens(drafts, draft_probs, target_probs, layout,
                                        num_accepted, uniforms[layout.bonus_rows], needs_draws)
    return DeviceAcceptance(num_accepted, final_tokens)


def verify_drafts(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    num_draft: list[int],
    generators: list[torch.Generator | None],
    seeds: list[int | None],
    first_positions: list[int],
) -> AcceptanceResult:
    """Acceptance for a batch mixing seeded and unseeded requests: seeded
    ones by the Gumbel-max rule (`coupled_verify`), the others by
    `rejection_sample` (generators[r] is used only for those).

    Arguments as for `rejection_sample`, plus per request its seed (or None)
    and first_positions[r], the output position its first row emits (its
    number of output tokens so far).
    """
    return verify_drafts_on_device(draft_token_ids, draft_probs, target_probs, num_draft, generators,
                                   seeds, first_positions).to_result(draft_token_ids.tolist(), num_draft)


def verify_drafts_on_device(draft_token_ids, draft_probs, target_probs, num_draft: list[int],
                            generators: list[torch.Generator | None], seeds: list[int | None],
                            first_positions: list[int], needs_draws: list[bool] | None = None
                            ) -> DeviceAcceptance:
    """`verify_drafts` without the host transfer (needs_draws as for
    `rejection_sample_on_device`)."""
    seeded = [r for r, seed in enumerate(seeds) if seed is not None]
    if not seeded:
        return rejection_sample_on_device(draft_token_ids, draft_probs, target_probs, num_draft,
                                          generators, needs_draws)
    unseeded = [r for r, seed in enumerate(seeds) if seed is None]
    slices = _RequestSlices(num_draft, target_probs.device)
    drafts, _, rows = slices.select(seeded, draft_token_ids, None, target_probs)
    parts = [(seeded, coupled_verify_on_device(drafts, rows, [num_draft[r] for r in seeded],
                                               [seeds[r] for r in seeded],
                                               [first_positions[r] for r in seeded]))]
    if unseeded:
        drafts, probs, rows = slices.select(unseeded, draft_token_ids, draft_probs, target_probs)
        parts.append((unseeded, rejection_sample_on_device(
            drafts, probs, rows, [num_draft[r] for r in unseeded], [generators[r] for r in unseeded],
            None if needs_draws is None else [needs_draws[r] for r in unseeded])))
    return _merge(parts, len(num_draft), target_probs.device)


def coupled_verify(draft_token_ids: torch.Tensor, target_probs: torch.Tensor, num_draft: list[int],
                   seeds: list[int], first_positions: list[int]) -> AcceptanceResult:
    """The Gumbel-max rule for seeded requests (module docstring).

    draft_token_ids [D]; target_probs [D + R, V] laid out as for
    `rejection_sample`; seeds[r] and first_positions[r] key request r's
    noise, row j of request r standing for output position first_positions[r] + j.
    """
    return coupled_verify_on_device(draft_token_ids, target_probs, num_draft, seeds,
                                    first_positions).to_result(draft_token_ids.tolist(), num_draft)


def coupled_verify_on_device(draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
                             num_draft: list[int], seeds: list[int],
                             first_positions: list[int]) -> DeviceAcceptance:
    """`coupled_verify` without the host transfer."""
    layout = _Layout(num_draft, target_probs.device)
    row_seeds = [seed for seed, n in zip(seeds, num_draft) for _ in range(n + 1)]
    row_positions = [first + j for first, n in zip(first_positions, num_draft) for j in range(n + 1)]
    tokens = seeded_tokens(target_probs, row_seeds, row_positions)  # [D + R]
    drafts = draft_token_ids.to(target_probs.device)
    num_accepted = _count_leading_accepts(drafts == tokens[layout.verify_rows], layout)
    return DeviceAcceptance(num_accepted, tokens[layout.first_row + num_accepted])


class _RequestSlices:
    """Where each request's drafts and rows sit, to split a packed batch by request."""

    def __init__(self, num_draft: list[int], device: torch.device):
        self.device = device
        self.draft_ranges, self.row_ranges = [], []
        draft_start = row_start = 0
        for n in num_draft:
            self.draft_ranges.append(range(draft_start, draft_start + n))
            self.row_ranges.append(range(row_start, row_start + n + 1))
            draft_start, row_start = draft_start + n, row_start + n + 1

    def select(self, requests: list[int], draft_token_ids, draft_probs, target_probs):
        """The packed drafts, draft distributions (or None) and target rows of `requests`."""
        drafts = self._index([self.draft_ranges[r] for r in requests])
        rows = self._index([self.row_ranges[r] for r in requests])
        probs = None if draft_probs is None else draft_probs[drafts.to(draft_probs.device)]
        return draft_token_ids[drafts.to(draft_token_ids.device)], probs, target_probs[rows]

    def _index(self, ranges: list[range]) -> torch.Tensor:
        return to_device([i for span in ranges for i in span], dtype=torch.long, device=self.device)


def _merge(parts: list[tuple[list[int], DeviceAcceptance]], num_requests: int, device) -> DeviceAcceptance:
    """Results of sub-batches (request indices, result) back in batch order, on the device."""
    accepted = torch.zeros(num_requests, dtype=torch.long, device=device)
    final = torch.zeros(num_requests, dtype=torch.long, device=device)
    for requests, part in parts:
        index = to_device(requests, dtype=torch.long, device=device)
        accepted[index], final[index] = part.num_accepted, part.final_tokens
    return DeviceAcceptance(accepted, final)


# --- the two rules both implementations share ---------------------------------

def _accept(uniform: torch.Tensor, p_t_x: torch.Tensor, p_d_x: torch.Tensor) -> torch.Tensor:
    """uniform: [K] in [0, 1); p_t_x, p_d_x: [K]. Accept with prob min(1, p_t/p_d): [K] bool.

    The min(1, .) is implicit because uniform < 1. A draft the drafter gave
    probability 0 has ratio inf (accepted if the target allows it) or nan
    (0/0, rejected): both are correct limits.
    """
    return uniform < p_t_x.float() / p_d_x.float()


def _residual(p_t: torch.Tensor, p_d: torch.Tensor) -> torch.Tensor:
    """p_t, p_d: [N, V]. Unnormalised max(0, p_t - p_d), or p_t where that is all zero."""
    residual = (p_t - p_d.float()).clamp_(min=0)
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    return torch.where(empty, p_t, residual)


def _sample_inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """weights: [N, V] non-negative, unnormalised; uniform: [N] in [0, 1). Returns [N] long.

    Token i is chosen when cdf[i-1] <= u * total < cdf[i], so a token of
    weight 0 is never chosen. float64 keeps the cumulative sum accurate over
    a large vocabulary.
    """
    cdf = weights.double().cumsum(dim=-1)
    total = cdf[:, -1]
    # u * total can round up to total; keeping the target strictly below it
    # guarantees that the chosen token has weight (cdf[i] > cdf[i-1]).
    target = torch.minimum(uniform.double() * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    return tokens.clamp_(max=weights.shape[1] - 1)


def _uniforms(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One request's draws: [count] float64 in [0, 1), from its own generator."""
    draws = torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device)
    return draws.to(device)


# --- vectorised implementation -------------------------------------------------

class _Layout:
    """Index tensors that locate each request's drafts and rows in the packed batch."""

    def __init__(self, num_draft: list[int], device: torch.device):
        self.num_draft_list = num_draft
        self.num_requests, self.num_drafts = len(num_draft), sum(num_draft)
        self.num_draft = to_device(num_draft, dtype=torch.long, device=device)
        self.first_row = torch.cumsum(self.num_draft + 1, 0) - (self.num_draft + 1)  # [R]
        self.draft_start = torch.cumsum(self.num_draft, 0) - self.num_draft  # [R]
        self.bonus_rows = self.first_row + self.num_draft  # [R]
        requests = torch.arange(self.num_requests, device=device)
        self.request_of_draft = torch.repeat_interleave(
            requests, self.num_draft, output_size=self.num_drafts)  # [D]
        self.request_of_row = torch.repeat_interleave(
            requests, self.num_draft + 1, output_size=self.num_drafts + self.num_requests)  # [D+R]
        draft_index = torch.arange(self.num_drafts, device=device)
        self.verify_rows = draft_index + self.request_of_draft  # [D]
        self.position = draft_index - self.draft_start[self.request_of_draft]  # [D]


def _check_shapes(draft_token_ids, draft_probs, target_probs, layout: _Layout, generators) -> None:
    """Fail early on a packing mistake instead of sampling from the wrong rows."""
    d, r = layout.num_drafts, layout.num_requests
    if draft_token_ids.shape != (d,):
        raise ValueError(f"draft_token_ids {tuple(draft_token_ids.shape)} != ({d},)")
    if target_probs.dim() != 2 or target_probs.shape[0] != d + r:
        raise ValueError(f"target_probs {tuple(target_probs.shape)} needs {d + r} rows")
    if draft_probs is not None and draft_probs.shape != (d, target_probs.shape[1]):
        raise ValueError(f"draft_probs {tuple(draft_probs.shape)} != ({d}, {target_probs.shape[1]})")
    if len(generators) != r:
        raise ValueError(f"{len(generators)} generators for {r} requests")


def _draw_uniforms(target_probs: torch.Tensor, layout: _Layout, generators: list[torch.Generator],
                   needs_draws: list[bool]) -> torch.Tensor:
    """[D + R] float64, laid out like target_probs' rows; 0 for requests that draw nothing."""
    uniforms = torch.zeros(target_probs.shape[0], dtype=torch.float64, device=target_probs.device)
    start = 0
    for n, generator, draws in zip(layout.num_draft_list, generators, needs_draws):
        if draws:
            uniforms[start: start + n + 1] = _uniforms(n + 1, generator, target_probs.device)
        start += n + 1
    return uniforms


def _spread_requests(target_probs: torch.Tensor, layout: _Layout) -> list[bool]:
    """Per request: does any of its rows have more than one possible token? (A device sync.)"""
    spread_rows = (target_probs > 0).sum(dim=-1) != 1
    spread_per_request = torch.zeros(layout.num_requests, dtype=torch.long, device=target_probs.device)
    spread_per_request.index_add_(0, layout.request_of_row, spread_rows.long())
    return [bool(count) for count in spread_per_request.tolist()]


def _draft_prob_of_drafts(drafts: torch.Tensor, draft_probs: torch.Tensor | None) -> torch.Tensor:
    """drafts: [D]; draft_probs: [D, V] or None. p_d,k(x_k) per draft: [D] float32."""
    if draft_probs is None:
        return torch.ones(drafts.shape[0], dtype=torch.float32, device=drafts.device)
    return draft_probs.gather(1, drafts[:, None]).squeeze(1).float()


def _count_leading_accepts(accepted: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """accepted: [D] bool. Drafts accepted before each request's first rejection: [R] long."""
    longest = max(layout.num_draft_list, default=0)
    grid = torch.zeros(layout.num_requests, longest, dtype=torch.long, device=accepted.device)
    grid[layout.request_of_draft, layout.position] = accepted.long()
    # Padding past a request's drafts stays 0, so it acts as a rejection
    # that the cumulative product stops at.
    return grid.cumprod(dim=1).sum(dim=1)


def _sample_final_tokens(drafts, draft_probs, target_probs, layout: _Layout, num_accepted: torch.Tensor,
                         uniform: torch.Tensor, needs_draws: list[bool]) -> torch.Tensor:
    """One recovered or bonus token per request: [R] long.

    drafts: [D]; draft_probs: [D, V] or None; target_probs: [D + R, V];
    num_accepted: [R]; uniform: [R]; needs_draws: [R].
    The row after the last accepted draft is the rejection row, or the bonus
    row when all drafts survived; in the latter case p_d is taken as 0 so the
    residual is p_t itself.

    A request that draws nothing has one-hot target rows (greedy, or no
    spread): the residual of a one-hot p_t weighs its own token only (a
    rejected draft is another token) or is empty and falls back to p_t, so
    the token is the row's argmax. Only drawing requests pay the
    vocabulary-wide float64 cumulative sum (at 32 greedy streams it was a
    tenth of every step).
    """
    final_rows = target_probs[layout.first_row + num_accepted]
    final = final_rows.argmax(dim=-1)
    drawing = [r for r, draws in enumerate(needs_draws) if draws]
    if not drawing:
        return final
    index = to_device(drawing, dtype=torch.long, device=target_probs.device)
    p_t = final_rows[index]
    rejected = (num_accepted < layout.num_draft)[index]
    p_d = _draft_rows_at(drafts, draft_probs, (layout.draft_start + num_accepted)[index], p_t)
    final[index] = _sample_inverse_cdf(_residual(p_t, p_d * rejected[:, None]), uniform[index])
    return final


def _draft_rows_at(drafts, draft_probs, draft_index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Draft distributions at `draft_index` ([R], may point past the end): [R, V].

    drafts: [D]; draft_probs: [D, V] or None (one-hot at the draft).
    """
    if drafts.shape[0] == 0:
        return torch.zeros_like(like)
    index = draft_index.clamp(max=drafts.shape[0] - 1)
    if draft_probs is not None:
        return draft_probs[index].float()
    return torch.zeros_like(like).scatter_(1, drafts[index][:, None], 1.0)


def _assemble(drafts: list[int], num_accepted: list[int], final_tokens: list[int],
              num_draft: list[int]) -> AcceptanceResult:
    """Per request: its accepted drafts, then the recovered or bonus token."""
    emitted, start = [], 0
    for n, accepted, final in zip(num_draft, num_accepted, final_tokens):
        emitted.append(drafts[start: start + accepted] + [final])
        start += n
    return AcceptanceResult(emitted, num_accepted)
