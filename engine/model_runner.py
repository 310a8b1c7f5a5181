"""SchedulerOutput -> packed tensors -> one target forward -> accepted tokens.

Every scheduled request contributes its query tokens (a prefill chunk, one
decode token, or the anchor plus the drafts to verify) to ONE packed forward
with no padding. Logits are computed only for rows that sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kv_cache import allocate_kv_caches
from engine.sampler import RowContext, compute_logprobs, make_generator, target_probs
from engine.spec.rejection import AcceptanceResult, verify_drafts
from kernels.attention import AttentionMetadata
from scheduler.output import RunnerOutput, ScheduledRequest, SchedulerOutput
from scheduler.request import Request


@dataclass
class PackedBatch:
    """The flattened inputs of one step."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    meta: AttentionMetadata
    sample_rows: list[int]  # packed-row index of every row that needs logits
    sampling: list[ScheduledRequest]  # requests that sample, in row order
    offsets: list[int]  # first packed row of each scheduled request


def pack_batch(scheduled: list[ScheduledRequest], block_size: int, device) -> PackedBatch:
    """Flatten each request's query tokens (real ones, then drafts)."""
    tokens, positions, query_lens, seq_lens, tables = [], [], [], [], []
    sample_rows, sampling, offsets = [], [], []
    for item in scheduled:
        offsets.append(len(tokens))
        request = item.request
        start, real = item.start_position, item.num_query_tokens
        query = request.token_ids(start, start + real) + item.spec_token_ids
        if item.samples:
            first_row = len(tokens) + real - 1  # the anchor: last real token
            sample_rows.extend(range(first_row, first_row + 1 + item.num_spec_tokens))
            sampling.append(item)
        tokens.extend(query)
        positions.extend(range(start, start + len(query)))
        query_lens.append(len(query))
        seq_lens.append(start + len(query))
        tables.append(item.block_ids)
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size, device)
    return PackedBatch(torch.tensor(tokens, dtype=torch.long, device=device),
                       torch.tensor(positions, dtype=torch.long, device=device),
                       meta, sample_rows, sampling, offsets)


def row_contexts(item: ScheduledRequest, masks: torch.Tensor | None = None) -> list[RowContext]:
    """Sampling context of the anchor row and each draft row: row j sees the
    output so far plus drafts 1..j, exactly what plain decoding would see if
    those drafts are accepted (masks[j]: the grammar's allowed tokens there)."""
    drafts = item.spec_token_ids
    return [RowContext.for_request(item.request, drafts[:j], None if masks is None else masks[j])
            for j in range(len(drafts) + 1)]


class ModelRunner:
    """Owns the target's KV cache and per-request generators; turns one
    SchedulerOutput into one RunnerOutput.

    `aux_layers`: target layers whose outputs a drafter reads; their
    features for the tokens whose KV counts go out in RunnerOutput.hidden_states.
    """

    def __init__(self, model, model_config, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: str, aux_layers: tuple[int, ...] = ()):
        self.model = model
        self.model_config = model_config
        self.block_size = block_size
        self.device = device
        self.kv_caches = allocate_kv_caches(model_config, num_blocks, block_size, dtype, device)
        self.generators: dict[str, torch.Generator] = {}
        self.aux_layers = aux_layers
        # The engine's StructuredOutputs (grammar masks of constrained requests).
        self.grammars = None

    def generator_for(self, request: Request) -> torch.Generator:
        gen = self.generators.get(request.request_id)
        if gen is None:
            gen = make_generator(request.sampling_params.seed, self.device)
            self.generators[request.request_id] = gen
        return gen

    def forget(self, request_id: str) -> None:
        """The request is gone for good (its generator survives preemption)."""
        self.generators.pop(request_id, None)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        batch = pack_batch(sched.scheduled, self.block_size, self.device)
        hidden, aux = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.meta,
                                 aux_layers=self.aux_layers)
        output = RunnerOutput()
        if batch.sampling:
            logits = self.model.compute_logits(hidden[batch.sample_rows])
            self._accept(batch.sampling, logits, output)
        if self.aux_layers:
            self._stash_hidden(sched.scheduled, batch.offsets, torch.cat(aux, dim=-1), output)
        return output

    def _accept(self, sampling: list[ScheduledRequest], logits: torch.Tensor, output: RunnerOutput) -> None:
        """Verify drafts (or plain-sample) for every sampling request."""
        result = self._verify(sampling, logits)
        row = 0
        for item, emitted, accepted in zip(sampling, result.emitted_token_ids, result.num_accepted):
            rid = item.request.request_id
            output.sampled_token_ids[rid] = emitted
            output.num_accepted[rid] = accepted
            num_top = item.request.sampling_params.logprobs
            if num_top is not None:
                output.logprobs[rid] = compute_logprobs(
                    logits[row:row + len(emitted)], torch.tensor(emitted, device=self.device),
                    [num_top] * len(emitted))
            row += item.num_spec_tokens + 1

    def _verify(self, sampling: list[ScheduledRequest], logits: torch.Tensor) -> AcceptanceResult:
        """Seeded requests follow the Gumbel-max rule (the same tokens with
        speculation on or off); the others rejection sampling."""
        probs = target_probs(logits, [ctx for item in sampling for ctx in row_contexts(item, self._masks(item))])
        draft_ids = torch.tensor([t for item in sampling for t in item.spec_token_ids],
                                 dtype=torch.long, device=self.device)
        requests = [item.request for item in sampling]
        seeds = [r.sampling_params.seed for r in requests]
        generators = [self.generator_for(r) if seed is None else None for r, seed in zip(requests, seeds)]
        result = verify_drafts(draft_ids, self._draft_probs(sampling, logits.shape[-1]), probs,
                               [item.num_spec_tokens for item in sampling], generators, seeds,
                               [r.num_output_tokens for r in requests])
        if self.grammars is not None:
            for request, emitted, accepted in zip(requests, result.emitted_token_ids, result.num_accepted):
                self.grammars.commit(request, emitted, accepted)
        return result

    def _masks(self, item: ScheduledRequest) -> torch.Tensor | None:
        """The grammar's masks of the item's rows ([n + 1, V] bool), or None."""
        if self.grammars is None:
            return None
        return self.grammars.verify_masks(item.request, item.spec_token_ids)

    def _stash_hidden(self, scheduled, offsets, features: torch.Tensor, output: RunnerOutput) -> None:
        """Keep the features of real query tokens and accepted drafts: exactly
        the tokens whose KV now counts (features [T, L * H])."""
        for item, offset in zip(scheduled, offsets):
            if not item.request.sampling_params.speculative:
                continue
            kept = item.num_query_tokens + output.num_accepted.get(item.request.request_id, 0)
            output.hidden_states[item.request.request_id] = features[offset: offset + kept].clone()

    def _draft_probs(self, sampling: list[ScheduledRequest], vocab: int) -> torch.Tensor | None:
        """[D, V] draft distributions of the verified drafts; one-hot rows for
        deterministic drafters; None when every drafter was deterministic."""
        pieces, any_probs = [], False
        for item in sampling:
            if not item.num_spec_tokens:
                continue
            probs = item.drafts.probs  # [n, V] for exactly the verified drafts
            if probs is None:
                ids = torch.tensor(item.spec_token_ids, device=self.device)
                probs = torch.nn.functional.one_hot(ids, vocab).float()
            else:
                any_probs = True
            pieces.append(probs)
        return torch.cat(pieces) if any_probs else None
