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
1b. constraints: logit_bias added (OpenAI), then the grammar's mask (tokens
   the request's response_format forbids at this row get -inf). Both are
   part of the distribution the user asked for, so drafters that build
   their q with target_probs see them too (speculation stays lossless);
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

import itertools
from dataclasses import dataclass

import torch

from kernels.to_device import to_device
from scheduler.output import TokenLogprob
from scheduler.request import Request, SamplingParams

# Seeded sampled requests sample and draft by Gumbel-max with noise keyed by
# (seed, output position, token) (engine/gumbel.py), not by these generators;
# a seeded draft generator is still seeded apart from the sampling one (a
# prime offset) for drafters that draw anything else at random.
DRAFT_SEED_OFFSET = 7919


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A per-request random generator, for rejection sampling of unseeded
    requests (seeded from OS entropy); seeded requests sample by the
    Gumbel-max rule instead (engine/gumbel.py). A given seed still gives a
    reproducible generator. Any int is a valid seed: it is reduced modulo
    2**64, the range torch accepts (a derived seed such as seed +
    DRAFT_SEED_OFFSET may leave the int64 range a request's seed is in)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed % 2**64)
    return generator


def draft_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator a drafter samples an unseeded request's drafts with
    (from OS entropy); for a seed, one offset from its sampling generator.
    Drafters draw seeded requests' drafts with the Gumbel noise instead
    (engine/spec/draw.py)."""
    return make_generator(None if seed is None else seed + DRAFT_SEED_OFFSET, device)


@dataclass
class RowContext:
    """What the sampling transforms of one logits row depend on."""

    params: SamplingParams
    prompt_token_ids: list[int]
    # Output so far INCLUDING any draft tokens that precede this row's
    # position, so that penalties at a verify row see the drafts before it.
    output_token_ids: list[int]
    # The tokens the request's grammar allows at this row ([V] bool), or None
    # when the request has no response_format.
    allowed: torch.Tensor | None = None

    @classmethod
    def for_request(cls, request: Request, drafted_tokens: list[int],
                    allowed: torch.Tensor | None = None) -> "RowContext":
        """The context of the row that follows `drafted_tokens` (the drafts
        before it): exactly what plain decoding would see at that position
        if those drafts are accepted (`allowed`: the grammar's mask there)."""
        return cls(request.sampling_params, request.prompt_token_ids,
                   request.output_token_ids + drafted_tokens, allowed)


def target_probs(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """Apply each row's sampling transforms and return its distribution.

    logits: [N, V] raw model logits (any float dtype).
    Returns [N, V] float32 probabilities; greedy rows are the one-hot of the
    argmax of the penalised logits.
    """
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
    logits = _apply_constraints(_apply_penalties(logits.float(), rows), rows)
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
    tensors = logprob_tensors(logits[index], token_ids.to(logits.device)[index], max(num_top[i] for i in wanted))
    host = {name: t.tolist() for name, t in tensors.items()}
    for j, i in enumerate(wanted):
        result[i] = token_logprob(host, j, num_top[i])
    return result


def logprob_tensors(logits: torch.Tensor, token_ids: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
    """Device tensors of `compute_logprobs` for every row (no host sync):
    chosen [N] (the token's logprob), top_ids and top_values [N, k] with
    k = min(count, V), most likely first. `token_logprob` reads a row back."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
    values, ids = logprobs.topk(min(count, logprobs.shape[1]), dim=-1)
    return {"token_ids": token_ids, "chosen": chosen, "top_ids": ids, "top_values": values}


def token_logprob(host: dict[str, list], row: int, num_top: int) -> TokenLogprob:
    """Row `row` of `logprob_tensors`' output, read back as host lists."""
    top = list(zip(host["top_ids"][row][:num_top], host["top_values"][row][:num_top]))
    return TokenLogprob(host["token_ids"][row], host["chosen"][row], top)


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
    if all(row.params.repetition_penalty == 1 for row in rows):
        return logits
    penalty = _row_tensor([row.params.repetition_penalty for row in rows], logits)
    seen = _token_counts([row.prompt_token_ids + row.output_token_ids for row in rows], logits) > 0
    # Dividing a positive logit and multiplying a negative one both make
    # the token less likely when penalty > 1 (and more likely when < 1).
    shrunk = torch.where(logits > 0, logits / penalty[:, None], logits * penalty[:, None])
    return torch.where(seen, shrunk, logits)


def _frequency_presence_penalty(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """logits: [P, V]. OpenAI penalties, over output tokens only."""
    if all(row.params.frequency_penalty == 0 and row.params.presence_penalty == 0 for row in rows):
        return logits
    frequency = _row_tensor([row.params.frequency_penalty for row in rows], logits)
    presence = _row_tensor([row.params.presence_penalty for row in rows], logits)
    counts = _token_counts([row.output_token_ids for row in rows], logits)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()


def _token_counts(token_lists: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """How often each token occurs in each list: [len(token_lists), V] float32, by one scatter."""
    num_rows, vocab = len(token_lists), like.shape[1]
    counts = torch.zeros(num_rows, vocab, dtype=torch.float32, device=like.device)
    tokens = to_device(list(itertools.chain.from_iterable(token_lists)), dtype=torch.long,
                          device=like.device)
    if tokens.numel():
        lengths = to_device([len(t) for t in token_lists], device=like.device)
        row_of_token = torch.repeat_interleave(torch.arange(num_rows, device=like.device), lengths,
                                               output_size=tokens.numel())
        counts.index_put_((row_of_token, tokens), torch.ones_like(tokens, dtype=torch.float32),
                          accumulate=True)
    return counts


# --- logit_bias and the grammar mask -------------------------------------

def _apply_constraints(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """logits: [N, V] float32. Adds each row's logit_bias, then sets the
    tokens its grammar forbids to -inf (a copy if any row is constrained)."""
    biased = [i for i, row in enumerate(rows) if row.params.logit_bias]
    masked = [i for i, row in enumerate(rows) if row.allowed is not None]
    if not biased and not masked:
        return logits
    logits = logits.clone()
    if biased:
        row_index = [i for i in biased for _ in rows[i].params.logit_bias]
        pairs = [pair for i in biased for pair in rows[i].params.logit_bias]
        token_index = _index([token for token, _ in pairs], logits)
        logits.index_put_((_index(row_index, logits), token_index),
                          torch.tensor([bias for _, bias in pairs], dtype=torch.float32, device=logits.device),
                          accumulate=True)
    if masked:
        allowed = torch.stack([rows[i].allowed.to(logits.device) for i in masked])
        index = _index(masked, logits)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return logits


# --- greedy and sampled rows -----------------------------------------------

def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits: [G, V]. One-hot float32 of the argmax (first index on ties)."""
    probs = torch.zeros_like(logits, dtype=torch.float32)
    return probs.scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)


def _sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """logits: [S, V] penalised, all rows with temperature > 0. Returns [S, V] float32."""
    if any(p.temperature != 1 for p in params):
        logits = logits / _row_tensor([p.temperature for p in params], logits)[:, None]
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
    """probs: [M, V]. Smallest probability kept by top-k then top-p, per row ([M]).

    Only the best max(top_k) tokens are sorted (the whole row when some row
    has top-p without top-k): with the common top_k=50 that is far cheaper
    than sorting the vocabulary.
    """
    vocab = probs.shape[1]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    best = probs.topk(max(top_k), dim=-1, sorted=True).values  # [M, max k], descending
    top_k_index = to_device(top_k, device=probs.device)[:, None] - 1
    threshold = best.gather(1, top_k_index).squeeze(1)
    if any(p.top_p < 1 for p in params):
        top_p = _row_tensor([p.top_p for p in params], probs)
        # The mass of all top-k survivors, ties beyond the sorted view included.
        total = torch.where(probs >= threshold[:, None], probs, torch.zeros_like(probs)).sum(-1)
        threshold = torch.maximum(threshold, _top_p_threshold(best, threshold, total, top_p))
    return threshold


def _top_p_threshold(best: torch.Tensor, top_k_threshold: torch.Tensor, total: torch.Tensor,
                     top_p: torch.Tensor) -> torch.Tensor:
    """best: [M, K] descending head of each row; top_k_threshold, total, top_p: [M].

    Keeps the shortest prefix of the top-k survivors whose renormalised mass
    (survivor mass / total) reaches top_p: a token stays if the mass strictly
    before it is below top_p. Returns the probability of the last kept token
    ([M]); 0 for rows with top_p == 1, so rounding in the cumulative sum
    cannot drop their tail.
    """
    survivors = torch.where(best >= top_k_threshold[:, None], best, torch.zeros_like(best))
    mass_before = survivors.cumsum(dim=-1) - survivors
    inside = (mass_before < (top_p * total)[:, None]) & (survivors > 0)
    last_kept = inside.sum(dim=-1, keepdim=True).clamp(min=1) - 1
    threshold = best.gather(1, last_kept).squeeze(1)
    return torch.where(top_p < 1, threshold, torch.zeros_like(threshold))


# --- small helpers ---------------------------------------------------------

def _row_tensor(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """One float32 parameter per row: [M]."""
    return to_device(values, dtype=torch.float32, device=like.device)


def _index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    """Row indices as a long tensor on `like`'s device: [M]."""
    return to_device(rows, dtype=torch.long, device=like.device)
