"""SchedulerOutput -> packed tensors -> one target forward -> accepted tokens.

Every scheduled request contributes its query tokens (a prefill chunk, one
decode token, or the anchor plus the drafts to verify) to ONE packed forward
with no padding. Logits are computed only for rows that sample.

Host synchronisation: nothing in the forward reads device values; the
step's results (accepted counts, final tokens, logprobs) come back to the
host in one packed transfer (engine/transfer.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.cuda_graphs import CudaGraphRunner
from engine.kv_cache import allocate_feature_cache, allocate_kv_caches
from engine.sampler import RowContext, logprob_tensors, make_generator, target_probs, token_logprob
from engine.spec.rejection import DeviceAcceptance, verify_drafts_on_device
from engine.spec.tree import BranchForks, StepForks, TreeCounts, accepted_slots, copy_blocks, copy_slots
from engine.transfer import fetch
from kernels.attention import AttentionMetadata
from kernels.to_device import to_device
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
    return PackedBatch(to_device(tokens, dtype=torch.long, device=device),
                       to_device(positions, dtype=torch.long, device=device),
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
    `cuda_graph_len` (the longest context, on CUDA only) replays decode and
    verification steps from CUDA graphs (engine/cuda_graphs.py); the cache
    then holds one more block, block `num_blocks`, for padding rows.
    `fork_blocks` scratch blocks after those hold the rows of drafts'
    alternative branches (engine/spec/tree.py); 0: drafts never branch.
    """

    def __init__(self, model, model_config, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: str, aux_layers: tuple[int, ...] = (),
                 cuda_graph_len: int | None = None, grammars=None, fork_blocks: int = 0):
        if fork_blocks and aux_layers:
            raise ValueError("drafts branch only for drafters that read no target features")
        self.model = model
        self.model_config = model_config
        self.block_size = block_size
        self.device = device
        extra = 0 if cuda_graph_len is None else 1
        self.kv_caches = allocate_kv_caches(model_config, num_blocks + extra + fork_blocks, block_size, dtype,
                                            device)
        self.forks = BranchForks(num_blocks + extra, fork_blocks, block_size)
        self.tree_counts = TreeCounts()
        self.generators: dict[str, torch.Generator] = {}
        self.aux_layers = aux_layers
        self.feature_cache = allocate_feature_cache(model_config, aux_layers, num_blocks + extra, block_size,
                                                    dtype, device)
        self.graphs = None if cuda_graph_len is None else CudaGraphRunner(
            model, self.kv_caches, block_size, cuda_graph_len, num_blocks, device)
        # The engine's StructuredOutputs (grammar masks of constrained
        # requests); None where nothing is ever constrained (tools, tests).
        self.grammars = grammars

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
        forks = self.forks.expand(sched.scheduled)
        if self.grammars is not None and any(self.grammars.get(f.item.request) for f in forks.forks):
            raise ValueError("drafts branch only for requests without a response_format grammar")
        self.tree_counts.record_step(forks)
        copy_blocks(self.kv_caches, forks.partial_copies)
        # Forks go last: the scheduled requests' rows keep their offsets.
        batch = pack_batch(sched.scheduled + forks.items, self.block_size, self.device)
        hidden, aux = self.forward(batch.input_ids, batch.positions, batch.meta)
        output = RunnerOutput()
        if batch.sampling:
            logits = self.model.compute_logits(hidden[to_device(batch.sample_rows, torch.long, self.device)])
            self._accept(batch.sampling, logits, output, forks)
        if self.aux_layers:
            features = torch.cat(aux, dim=-1)[: batch.meta.slot_mapping.shape[0]]  # real rows (graphs pad)
            features = features.to(self.feature_cache.dtype)
            self.feature_cache.index_copy_(0, batch.meta.slot_mapping, features)
            self._stash_hidden(sched.scheduled, batch.offsets, features, output)
        return output

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        """The target forward of one packed step: (hidden, aux). Replayed from
        a CUDA graph when one fits (hidden then has the bucket's rows, the
        real ones first), else run eagerly."""
        if self.graphs is not None:
            out = self.graphs.forward(input_ids, positions, meta, self.aux_layers)
            if out is not None:
                return out
        return self.model(input_ids, positions, self.kv_caches, meta, aux_layers=self.aux_layers)

    def _accept(self, sampling: list[ScheduledRequest], logits: torch.Tensor, output: RunnerOutput,
                forks: StepForks) -> None:
        """Verify drafts (or plain-sample) for every sampling request and
        fork; the results reach the host in one transfer."""
        acceptance = self._verify(sampling, logits)
        tensors = {"num_accepted": acceptance.num_accepted, "final": acceptance.final_tokens}
        wanted = [i for i, item in enumerate(sampling) if item.request.sampling_params.logprobs is not None]
        if wanted:
            tensors.update(self._logprob_tensors(sampling, wanted, logits, acceptance))
        host = fetch(tensors)
        chosen = self._keep_longest_branches(sampling, host["num_accepted"], forks)
        logprob_row = 0
        for i, item in enumerate(sampling[: len(sampling) - len(forks.forks)]):
            winner = chosen.get(i, i)
            rid, accepted = item.request.request_id, host["num_accepted"][winner]
            emitted = sampling[winner].spec_token_ids[:accepted] + [host["final"][winner]]
            output.sampled_token_ids[rid] = emitted
            output.num_accepted[rid] = accepted
            if winner != i:
                output.block_accepted[rid] = host["num_accepted"][i]
            if self.grammars is not None:  # roll back the rejected drafts, accept the final token
                self.grammars.commit(item.request, emitted, accepted)
            num_top = item.request.sampling_params.logprobs
            if num_top is not None:
                output.logprobs[rid] = [token_logprob(host, logprob_row + j, num_top) for j in range(len(emitted))]
                logprob_row += item.num_spec_tokens + 1

    def _keep_longest_branches(self, sampling: list[ScheduledRequest], num_accepted: list[int],
                               forks: StepForks) -> dict[int, int]:
        """For each request whose drafts branched, the sampling row group
        that accepted most (its own on a tie), by the request's group index;
        a winning fork's accepted KV is copied into the request's slots."""
        if not forks.forks:
            return {}
        first_fork = len(sampling) - len(forks.forks)
        group_of = {id(item): i for i, item in enumerate(sampling[:first_fork])}
        chosen: dict[int, int] = {}
        for j, fork in enumerate(forks.forks, start=first_fork):
            main = group_of[id(fork.main)]
            if num_accepted[j] > num_accepted[chosen.get(main, main)]:
                chosen[main] = j
        for main, j in chosen.items():
            self.tree_counts.record_win(num_accepted[j])
            copy_slots(self.kv_caches, *accepted_slots(sampling[main], sampling[j], num_accepted[j],
                                                       self.block_size))
        return chosen

    def _logprob_tensors(self, sampling, wanted: list[int], logits: torch.Tensor,
                         acceptance: DeviceAcceptance) -> dict[str, torch.Tensor]:
        """Logprobs of every row of the requests in `wanted`, each row's token
        being what it emits if it is reached: its draft, or the final token at
        row num_accepted (rows past it are dropped on the host)."""
        rows, tokens, final_rows = [], [], []
        first = 0
        for i, item in enumerate(sampling):
            if i in wanted:
                final_rows.append(len(rows))
                rows.extend(range(first, first + item.num_spec_tokens + 1))
                tokens.extend(item.spec_token_ids + [0])
            first += item.num_spec_tokens + 1
        index = to_device(wanted, dtype=torch.long, device=logits.device)
        row_tokens = to_device(tokens, dtype=torch.long, device=logits.device)
        final_at = to_device(final_rows, dtype=torch.long, device=logits.device) + acceptance.num_accepted[index]
        row_tokens[final_at] = acceptance.final_tokens[index]
        count = max(sampling[i].request.sampling_params.logprobs for i in wanted)
        return logprob_tensors(logits[to_device(rows, device=logits.device)], row_tokens, count)

    def _verify(self, sampling: list[ScheduledRequest], logits: torch.Tensor) -> DeviceAcceptance:
        """Seeded requests follow the Gumbel-max rule (the same tokens with
        speculation on or off); the others rejection sampling. Greedy
        requests draw no random numbers (decided here, not by reading the
        probabilities back). Grammar masks enter the target's rows here."""
        probs = target_probs(logits, [ctx for item in sampling for ctx in row_contexts(item, self._masks(item))])
        draft_ids = to_device([t for item in sampling for t in item.spec_token_ids],
                                 dtype=torch.long, device=self.device)
        requests = [item.request for item in sampling]
        seeds = [r.sampling_params.seed for r in requests]
        generators = [self.generator_for(r) if seed is None else None for r, seed in zip(requests, seeds)]
        return verify_drafts_on_device(draft_ids, self._draft_probs(sampling, logits.shape[-1]), probs,
                                       [item.num_spec_tokens for item in sampling], generators, seeds,
                                       [r.num_output_tokens for r in requests],
                                       needs_draws=[not r.sampling_params.greedy for r in requests])

    def _masks(self, item: ScheduledRequest) -> torch.Tensor | None:
        """The grammar's masks of the item's rows ([n + 1, V] bool), or None."""
        if self.grammars is None:
            return None
        return self.grammars.verify_masks(item.request, item.spec_token_ids)

    def _stash_hidden(self, scheduled, offsets, features: torch.Tensor, output: RunnerOutput) -> None:
        """Keep the features of real query tokens and accepted drafts: exactly
        the tokens whose KV now counts (features [T, L * H]); after a
        prefix-cache hit, the cached tokens' features first."""
        for item, offset in zip(scheduled, offsets):
            if not item.request.sampling_params.speculative:
                continue
            kept = item.num_query_tokens + output.num_accepted.get(item.request.request_id, 0)
            new = features[offset: offset + kept]
            if item.num_cached_prefix:
                new = torch.cat([self._cached_features(item), new])
            output.hidden_states[item.request.request_id] = new.clone()

    def _cached_features(self, item: ScheduledRequest) -> torch.Tensor:
        """Features of the item's prefix-cached tokens, read from the slots
        their KV occupies (the cache covers whole blocks)."""
        blocks = item.block_ids[: item.num_cached_prefix // self.block_size]
        slots = [block * self.block_size + i for block in blocks for i in range(self.block_size)]
        return self.feature_cache[to_device(slots, torch.long, self.device)]

    def _draft_probs(self, sampling: list[ScheduledRequest], vocab: int) -> torch.Tensor | None:
        """[D, V] draft distributions of the verified drafts; one-hot rows for
        deterministic drafters; None when every drafter was deterministic."""
        pieces, any_probs = [], False
        for item in sampling:
            if not item.num_spec_tokens:
                continue
            probs = item.drafts.probs  # [n, V] for exactly the verified drafts
            if probs is None:
                ids = to_device(item.spec_token_ids, device=self.device)
                probs = torch.nn.functional.one_hot(ids, vocab).float()
            else:
                any_probs = True
            pieces.append(probs)
        return torch.cat(pieces) if any_probs else None
