"""Per-request sampling transforms: raw logits -> the distribution the user asked for.

`target_probs` is the single place where a request's sampling parameters are
applied. Speculative acceptance (engine/spec/rejection.py) compares drafts
against exactly these probabilities, and plain decoding samples from them, so
both paths see the same distribution.

Order of the transforms (fixed, documented because it changes results):

1. penalties on the raw logits: repetition (vLLM/HF: divide positive logits,
   multiply negative ones, for every token seen in prompt or output), then
   frequency and presence (OpenAI: subtract `frequency * count + presence *
   [count > 0]` over output tokens only);
2. greedy rows (temperature 0) stop here: one-hot of the argmax;
3. temperature, softmax;
4. top-k, then top-p on the top-k-renormalised distribution, then min-p
   relative to the most likely token. Every filter keeps all tokens tied
   with its boundary token, so the result never depends on sort order.

All three filters reduce to one probability threshold per row (keep tokens
with `p >= threshold`), which keeps the filtering a single masked pass.
Rows that use no penalty or filter skip that work entirely.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scheduler.output import TokenLogprob
from scheduler.request import SamplingParams


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A per-request random generator.

    Seeded requests get a generator of their own, so their samples are
    reproducible and independent of which other requests share the batch;
    unseeded ones are seeded from OS entropy.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@dataclass
class RowContext:
    """What the sampling transforms of one logits row depend on."""

    params: SamplingParams
    prompt_token_ids: list[int]
    # Output so far INCLUDING any draft tokens that precede this row's
    # position, so that penalties at a verify row see the drafts before it.
    output_token_ids: list[int]


def target_probs(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """Apply each row's sampling transforms and return its distribution.

    logits: [N, V] raw model logits (any float dtype).
    Returns [N, V] float32 probabilities; greedy rows are the one-hot of the
    argmax of the penalised logits.
    """
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
    logits = _apply_penalties(logits.float(), rows)
    greedy = [i for i, row in enumerate(rows) if row.params.greedy]
    if len(greedy) == len(rows):
        return _one_hot_argmax(logits)
    if not greedy:
        return _sampling_probs(logits, [row.params for row in rows])
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    greedy_index, sampled_index = _index(greedy, logits), _index(sampled, logits)
    probs = torch.empty_like(logits)
    probs[greedy_index] = _one_hot_argmax(logits[greedy_index])
    probs[sampled_index] = _sampling_probs(logits[sampled_index], [rows[i].params for i in sampled])
    return probs


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor,
                     num_top: list[int | None]) -> list[TokenLogprob | None]:
    """Logprobs of the chosen tokens and their top alternatives.

    logits: [N, V] raw model logits; token_ids: [N] long, the emitted tokens.
    Uses log_softmax of the RAW logits (vLLM's default "raw logprobs"): what
    the model believes, before penalties, temperature or filters. Row i gets
    a TokenLogprob with `num_top[i]` alternatives (most likely first), or
    None when `num_top[i]` is None.
    """
    wanted = [i for i, n in enumerate(num_top) if n is not None]
    result: list[TokenLogprob | None] = [None] * len(num_top)
    if not wanted:
        return result
    index = _index(wanted, logits)
    logprobs = torch.log_softmax(logits[index].float(), dim=-1)
    chosen_ids = token_ids.to(logits.device)[index]
    chosen = logprobs.gather(1, chosen_ids[:, None]).squeeze(1).tolist()
    top_ids, top_values = _top_alternatives(logprobs, max(num_top[i] for i in wanted))
    for j, i in enumerate(wanted):
        top = list(zip(top_ids[j][: num_top[i]], top_values[j][: num_top[i]]))
        result[i] = TokenLogprob(int(chosen_ids[j]), chosen[j], top)
    return result


# --- penalties -------------------------------------------------------------

def _apply_penalties(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """logits: [N, V] float32. Returns penalised logits (a copy if any row is penalised)."""
    penalised = [i for i, row in enumerate(rows) if row.params.has_penalties]
    if not penalised:
        return logits
    index = _index(penalised, logits)
    sub_rows = [rows[i] for i in penalised]
    sub = _repetition_penalty(logits[index], sub_rows)
    sub = _frequency_presence_penalty(sub, sub_rows)
    logits = logits.clone()
    logits[index] = sub
    return logits


def _repetition_penalty(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """logits: [P, V]. Shrinks logits of tokens seen in prompt or output (vLLM/HF rule)."""
    penalty = _row_tensor([row.params.repetition_penalty for row in rows], logits)
    if bool((penalty == 1).all()):
        return logits
    seen = _token_counts([row.prompt_token_ids + row.output_token_ids for row in rows], logits) > 0
    # Dividing a positive logit and multiplying a negative one both make
    # the token less likely when penalty > 1 (and more likely when < 1).
    shrunk = torch.where(logits > 0, logits / penalty[:, None], logits * penalty[:, None])
    return torch.where(seen, shrunk, logits)


def _frequency_presence_penalty(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """logits: [P, V]. OpenAI penalties, over output tokens only."""
    frequency = _row_tensor([row.params.frequency_penalty for row in rows], logits)
    presence = _row_tensor([row.params.presence_penalty for row in rows], logits)
    if bool((frequency == 0).all() and (presence == 0).all()):
        return logits
    counts = _token_counts([row.output_token_ids for row in rows], logits)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()


def _token_counts(token_lists: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """How often each token occurs in each list: [len(token_lists), V] float32, by one scatter."""
    num_rows, vocab = len(token_lists), like.shape[1]
    counts = torch.zeros(num_rows * vocab, dtype=torch.float32, device=like.device)
    flat_ids = [row * vocab + tok for row, tokens in enumerate(token_lists) for tok in tokens]
    if flat_ids:
        index = torch.tensor(flat_ids, dtype=torch.long, device=like.device)
        counts.index_add_(0, index, torch.ones(len(flat_ids), device=like.device))
    return counts.view(num_rows, vocab)


# --- greedy and sampled rows -----------------------------------------------

def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits: [G, V]. One-hot float32 of the argmax (first index on ties)."""
    probs = torch.zeros_like(logits, dtype=torch.float32)
    return probs.scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)


def _sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """logits: [S, V] penalised, all rows with temperature > 0. Returns [S, V] float32."""
    temperature = _row_tensor([p.temperature for p in params], logits)
    if bool((temperature != 1).any()):
        logits = logits / temperature[:, None]
    probs = torch.softmax(logits, dim=-1)
    filtered = [i for i, p in enumerate(params) if _has_filter(p)]
    if not filtered:
        return probs
    index = _index(filtered, probs)
    probs[index] = _filter(probs[index], [params[i] for i in filtered])
    return probs


def _has_filter(params: SamplingParams) -> bool:
    return params.top_k > 0 or params.top_p < 1 or params.min_p > 0


def _filter(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """probs: [M, V]. Zero the tokens below each row's threshold and renormalise."""
    threshold = _min_p_threshold(probs, params)
    sorting = [i for i, p in enumerate(params) if p.top_k > 0 or p.top_p < 1]
    if sorting:
        index = _index(sorting, probs)
        sorted_threshold = _top_k_top_p_threshold(probs[index], [params[i] for i in sorting])
        threshold[index] = torch.maximum(threshold[index], sorted_threshold)
    kept = torch.where(probs >= threshold[:, None], probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def _min_p_threshold(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """probs: [M, V]. min_p * max prob per row ([M]); 0 where min-p is off.

    Computed on the unfiltered distribution: top-k/top-p never remove the
    most likely token and renormalising keeps probability ratios, so this
    equals min-p applied after them.
    """
    min_p = _row_tensor([p.min_p for p in params], probs)
    return min_p * probs.max(dim=-1).values


def _top_k_top_p_threshold(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """probs: [M, V]. Smallest probability kept by top-k then top-p, per row ([M])."""
    vocab = probs.shape[1]
    sorted_probs = probs.sort(dim=-1, descending=True).values
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_k_index = torch.tensor(top_k, device=probs.device)[:, None] - 1
    threshold = sorted_probs.gather(1, top_k_index).squeeze(1)
    if any(p.top_p < 1 for p in params):
        top_p = _row_tensor([p.top_p for p in params], probs)
        threshold = torch.maximum(threshold, _top_p_threshold(sorted_probs, threshold, top_p))
    return threshold


def _top_p_threshold(sorted_probs: torch.Tensor, top_k_threshold: torch.Tensor,
                     top_p: torch.Tensor) -> torch.Tensor:
    """sorted_probs: [M, V] descending; top_k_threshold, top_p: [M].

    Keeps the shortest prefix of the top-k survivors whose renormalised mass
    reaches top_p: a token stays if the mass strictly before it is below
    top_p. Returns the probability of the last kept token ([M]); 0 for rows
    with top_p == 1, so rounding in the cumulative sum cannot drop their tail.
    """
    survivors = torch.where(sorted_probs >= top_k_threshold[:, None], sorted_probs,
                            torch.zeros_like(sorted_probs))
    mass_before = survivors.cumsum(dim=-1) - survivors
    total = survivors.sum(dim=-1, keepdim=True)
    inside = (mass_before < top_p[:, None] * total) & (survivors > 0)
    last_kept = inside.sum(dim=-1, keepdim=True).clamp(min=1) - 1
    threshold = sorted_probs.gather(1, last_kept).squeeze(1)
    return torch.where(top_p < 1, threshold, torch.zeros_like(threshold))


# --- small helpers ---------------------------------------------------------

def _top_alternatives(logprobs: torch.Tensor, count: int) -> tuple[list[list[int]], list[list[float]]]:
    """logprobs: [M, V]. Ids and values of the `count` best tokens per row, as lists."""
    count = min(count, logprobs.shape[1])
    if count == 0:
        return [[] for _ in range(logprobs.shape[0])], [[] for _ in range(logprobs.shape[0])]
    values, ids = logprobs.topk(count, dim=-1)
    return ids.tolist(), values.tolist()


def _row_tensor(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """One float32 parameter per row: [M]."""
    return torch.tensor(values, dtype=torch.float32, device=like.device)


def _index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    """Row indices as a long tensor on `like`'s device: [M]."""
    return torch.tensor(rows, dtype=torch.long, device=like.device)
