"""The engine loop: take new requests -> schedule -> execute -> update ->
draft -> emit.

Synchronous and single-threaded on purpose; `engine/client.py` runs it in a
background thread and bridges it to asyncio. The engine wires the rooms
together and decides nothing itself: the scheduler (with its verification
policy) decides who runs, who drafts and what is verified; the runner
computes; the drafter drafts.

Errors are isolated per request (engine/isolation.py): an error tied to one
request fails that request (`take_failures`) and the step goes on; an
exception that escapes `step()` means the engine cannot go on.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import replace

import torch

from engine.config import EngineConfig
from engine.device import resolve_dtype
from engine.device_stats import DeviceSampler, source_for_device
from engine.isolation import FailureIsolation, RequestFailure
from engine.kv_cache import kv_bytes_per_token
from engine.model_runner import ModelRunner
from engine.models.loader import LoadedModel, load_model
from engine.output_processor import OutputProcessor
from engine.outputs import EngineStats, RequestOutput, SourceCounts
from engine.profiler import load_or_profile
from engine.sampler import draft_generator
from kernels.attention import triton_attention_available
from engine.spec.base import DraftInput, Drafter
from engine.spec.factory import build_drafter
from engine.spec.tree import FORKS_PER_STEP
from engine.trace import StepLoad, StepTrace, step_traces
from engine.structured.outputs import StructuredOutputs
from scheduler.drafting import DraftingLimits
from scheduler.block_manager import cdiv
from scheduler.load import StepCostModel
from scheduler.output import DraftSlot, RunnerOutput, SchedulerOutput
from scheduler.policies import PolicyContext, VerifyPolicy, build_policy, policy_spec
from scheduler.request import Request, RequestStatus, SamplingParams
from scheduler.scheduler import Scheduler

log = logging.getLogger("specserve.engine")


def loaded_dtype(loaded: LoadedModel, requested_name: str, requested: torch.dtype) -> torch.dtype:
    """The dtype an engine runs a model it was handed in: the model's own.
    The KV cache and the drafter follow it; `auto` (which on a bfloat16-
    native host means bfloat16) must not give a float32 model a bfloat16
    cache, and an explicit dtype that disagrees with the weights is refused."""
    weights = next(loaded.model.parameters()).dtype
    if requested_name != "auto" and requested != weights:
        raise ValueError(f"dtype {requested_name} requested for a model loaded in {weights}")
    return weights


class LLMEngine:
    """Owns the model, the scheduler, the drafter and per-request text state.

    `drafter` replaces the one the config names (tests, the offline
    evaluator); `step_cost` skips start-up profiling.
    """

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None,
                 step_cost: StepCostModel | None = None, drafter: Drafter | None = None):
        self.config = config
        dtype = resolve_dtype(config.dtype, config.device)
        if loaded is not None:
            dtype = loaded_dtype(loaded, config.dtype, dtype)
        self.loaded = loaded or load_model(config.model, dtype, config.device)
        if self.loaded.model.batch_invariant != config.batch_invariant:
            self.loaded.model.use_inference_kernels(config.batch_invariant)
        self.tokenizer = self.loaded.tokenizer
        self.model_config = self.loaded.config
        self.max_model_len = min(config.scheduler.max_model_len, self.model_config.max_position_embeddings)
        cache = config.cache
        self.drafter = drafter or build_drafter(config, self.loaded, cache.num_blocks, dtype)
        self.grammars = StructuredOutputs(self.tokenizer, self.model_config.vocab_size,
                                          config.speculative.num_speculative_tokens)
        self.runner = ModelRunner(self.loaded.model, self.model_config, cache.num_blocks,
                                  cache.block_size, dtype, config.device,
                                  aux_layers=self.drafter.aux_layers if self.drafter else (),
                                  cuda_graph_len=self._cuda_graph_len(), grammars=self.grammars,
                                  fork_blocks=self._fork_blocks())
        self.verify_policy = self._build_verify_policy(step_cost)
        # Machine counters for the scheduler's load signal, read off the step loop.
        counters = source_for_device(config.device) if config.machine_counters else None
        self.device_sampler = DeviceSampler(counters).start()
        self.scheduler = Scheduler(config.scheduler, cache, drafting=self._drafting_limits(),
                                   verify_policy=self.verify_policy,
                                   device_counters=self.device_sampler.latest)
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self.draft_generators: dict[str, torch.Generator] = {}
        self.isolation = FailureIsolation(self._drop_failed)
        self.stats = EngineStats(accepted_per_position=[0] * config.speculative.num_speculative_tokens)
        log.info("engine ready: %s, %d KV blocks x %d tokens (%.1f MiB)", self.loaded.path,
                 cache.num_blocks, cache.block_size,
                 cache.num_tokens * kv_bytes_per_token(self.model_config, dtype) / 2**20)

    def _cuda_graph_len(self) -> int | None:
        """The context length CUDA graphs are sized for, or None when steps run eagerly."""
        on_cuda = torch.device(self.config.device).type == "cuda"
        wanted = on_cuda if self.config.cuda_graphs is None else self.config.cuda_graphs
        if not wanted:
            return None
        if not on_cuda:
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.config.device!r} (--no-cuda-graphs)")
        if not triton_attention_available(self.config.device, self.config.cache.block_size):
            if self.config.cuda_graphs:
                raise ValueError("CUDA graphs need triton (the attention they capture) and a power-of-two "
                                 "block size")
            log.warning("CUDA graphs off: they need triton installed and a power-of-two block size")
            return None
        return self.max_model_len

    def _fork_blocks(self) -> int:
        """Scratch KV blocks for the drafts' alternative branches: room for
        FORKS_PER_STEP branches of a full block each, wherever the anchor sits."""
        spec, block_size = self.config.speculative, self.config.cache.block_size
        if not (spec.ngram_alternatives and spec.enabled):
            return 0
        return FORKS_PER_STEP * cdiv(block_size + spec.num_speculative_tokens, block_size)

    def _build_verify_policy(self, step_cost: StepCostModel | None) -> VerifyPolicy | None:
        if self.drafter is None:
            return None
        spec, limits = self.config.speculative, self.config.scheduler
        if policy_spec(spec.policy).needs_step_cost and step_cost is None:
            step_cost = load_or_profile(self.runner, self.loaded.path, self.config.device,
                                        self.config.dtype, limits.max_num_batched_tokens,
                                        limits.max_num_seqs)
        context = PolicyContext(max_draft=spec.num_speculative_tokens,
                                max_batched_tokens=limits.max_num_batched_tokens, step_cost=step_cost)
        return build_policy(spec.policy, context)

    def _drafting_limits(self) -> DraftingLimits | None:
        """The drafter's limits; k is clamped to what it can draft per step."""
        if self.drafter is None:
            return None
        k, most = self.config.speculative.num_speculative_tokens, self.drafter.max_draft_tokens
        if most is not None and k > most:
            log.warning("--num-speculative-tokens %d exceeds what %s drafts per step; using %d",
                        k, self.drafter.name or type(self.drafter).__name__, most)
            k = most
        return DraftingLimits(max_tokens=k, num_lookahead_slots=self.drafter.num_lookahead_slots,
                              costs_compute=self.drafter.costs_compute)

    # ---- requests in -------------------------------------------------------
    def validate_prompt(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a prompt the engine can never serve. The HTTP
        path checks these rules once, in server/validation.py; direct callers
        (generate) check here."""
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_token_ids)} tokens; this model's context "
                             f"is {self.max_model_len} tokens, with at least one for the output")
        if len(prompt_token_ids) + 1 > self.config.cache.num_tokens:
            raise ValueError("the prompt does not fit in the KV cache")
        bad = [t for t in prompt_token_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary")
        if any(t >= self.model_config.vocab_size for t, _ in params.logit_bias):
            raise ValueError("a logit_bias token id is outside the vocabulary")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue a prompt already validated (validate_prompt's rules). If this
        raises, nothing of the request is left behind."""
        if request_id in self.requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        request = Request(request_id, list(prompt_token_ids), params,
                          eos_token_id=self.tokenizer.eos_token_id)
        self.requests[request_id] = request
        try:
            self.grammars.add(request)
            self.outputs.add_request(request)
            self.scheduler.add_request(request)
        except BaseException:
            self._drop_failed(request_id)
            raise
        self.stats.prompt_tokens += len(prompt_token_ids)

    def abort_request(self, request_id: str) -> bool:
        """Abort at once: blocks are freed now; drafter state at the next step."""
        if self.requests.pop(request_id, None) is None:
            return False
        self.scheduler.abort_request(request_id)
        self._forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def take_failures(self) -> list[RequestFailure]:
        """Requests failed since the last call; each gets no more outputs."""
        return self.isolation.take_failures()

    def _drop_failed(self, request_id: str) -> None:
        """Remove a failed request: its KV is freed now, the drafter's state
        at the next step (the scheduler lists it as freed)."""
        self.requests.pop(request_id, None)
        self.scheduler.abort_request(request_id)
        self._forget(request_id)

    # ---- one step ----------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        sched = self.scheduler.schedule()
        if self.drafter:
            self.drafter.forget(sched.freed_request_ids)
        if sched.is_empty:
            return self._collect_unscheduled_finished(sched.freed_request_ids)
        runner_out = self._execute(sched)
        updates = self.scheduler.update_from_output(sched, runner_out, self._check_stop)
        self._record_step(sched, runner_out)
        self._draft(sched, runner_out)
        # The whole step, drafting included: what a bigger batch really costs.
        seconds = time.perf_counter() - started
        self.scheduler.observe_step_time(sched.total_num_tokens, seconds)
        load = StepLoad(len(sched.scheduled), sched.total_num_tokens, self.scheduler.num_waiting,
                        seconds * 1000)
        traces = step_traces(sched, runner_out, load)
        return self._emit(updates, runner_out, traces) + self._collect_unscheduled_finished(sched.freed_request_ids)

    def _execute(self, sched: SchedulerOutput) -> RunnerOutput:
        """The target forward; if the batch fails, each request alone (the
        scheduler has committed nothing yet, so a rerun is the same step)."""
        return self.isolation.batched(
            "forward", sched.scheduled, lambda item: item.request.request_id,
            lambda items: self.runner.execute(dataclasses.replace(sched, scheduled=list(items))),
            _merge_runner_outputs)

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        """The stop check, isolated: if it raises, the request fails and the
        scheduler finishes it (as aborted, freeing its KV) like any stop."""
        try:
            return self.outputs.check_stop(request, token_id)
        except Exception as exc:  # noqa: BLE001 - fails this request only
            self.isolation.fail(request.request_id, "stop check", exc, drop=False)
            return RequestStatus.FINISHED_ABORTED

    def _emit(self, updates, runner_out: RunnerOutput,
              traces: dict[str, StepTrace]) -> list[RequestOutput]:
        outputs = []
        for request, new_tokens in updates:
            if self.isolation.has_failed(request.request_id):
                self._drop_failed(request.request_id)  # it gets an error, not an output
                continue
            logprobs = runner_out.logprobs.get(request.request_id)
            if logprobs is not None:
                logprobs = logprobs[: len(new_tokens)]
            self._append_output(outputs, request, new_tokens, logprobs,
                                traces.get(request.request_id))
        return outputs

    def _append_output(self, outputs: list[RequestOutput], request: Request, new_tokens: list[int],
                       logprobs, trace: StepTrace | None = None) -> None:
        ok, out = self.isolation.attempt(request.request_id, "output", self.outputs.make_output,
                                         request, new_tokens, logprobs, trace)
        if ok:
            outputs.append(out)
            if request.is_finished:
                self.requests.pop(request.request_id, None)
                self._forget(request.request_id)

    def _collect_unscheduled_finished(self, freed_request_ids: list[str]) -> list[RequestOutput]:
        """Requests the scheduler finished on its own (e.g. could never fit):
        they are among the step's freed ids and still held here."""
        outputs: list[RequestOutput] = []
        for rid in freed_request_ids:
            request = self.requests.get(rid)
            if request is not None and request.is_finished:
                self._append_output(outputs, request, [], None)
        return outputs

    def _forget(self, request_id: str) -> None:
        self.outputs.remove(request_id)
        self.runner.forget(request_id)
        self.draft_generators.pop(request_id, None)
        self.grammars.forget(request_id)

    # ---- drafting ----------------------------------------------------------
    def _draft(self, sched: SchedulerOutput, runner_out: RunnerOutput) -> None:
        """The drafter absorbs what the target confirmed, then drafts for the
        requests the scheduler lets draft; the scheduler installs the drafts."""
        if not self.drafter:
            return
        sampled = []
        for item in sched.scheduled:
            request = item.request
            if request.is_finished or not request.sampling_params.speculative:
                continue
            absorbed, _ = self.isolation.attempt(
                request.request_id, "drafting", self.drafter.absorb, request,
                runner_out.hidden_states.get(request.request_id))
            if absorbed and request.request_id in runner_out.sampled_token_ids:
                sampled.append(request)
        slots = self.scheduler.draft_slots(sampled)
        if slots:
            # Drafts the grammar forbids are cut here: never verified (engine/structured/outputs.py).
            self.scheduler.install_drafts(self.grammars.cut_drafts(self._propose(slots), self.requests))
            self.stats.num_grammar_cut_draft_tokens = self.grammars.num_cut_draft_tokens

    def _propose(self, slots: list[DraftSlot]) -> dict:
        """The drafter's proposals, isolated per request like the forward."""
        inputs = []
        for slot in slots:
            ok, draft_input = self.isolation.attempt(slot.request.request_id, "drafting",
                                                     self._draft_input, slot)
            if ok:
                inputs.append(draft_input)
        return self.isolation.batched(
            "drafting", inputs, lambda draft_input: draft_input.request.request_id,
            self.drafter.propose, lambda proposals: {k: v for p in proposals for k, v in p.items()})

    def _draft_input(self, slot: DraftSlot) -> DraftInput:
        request = slot.request
        gen = self.draft_generators.get(request.request_id)
        if gen is None:
            gen = draft_generator(request.sampling_params.seed, self.config.device)
            self.draft_generators[request.request_id] = gen
        return DraftInput(request, slot.max_tokens, gen, slot.block_ids, self.grammars.get(request),
                          slot.economics)

    # ---- statistics --------------------------------------------------------
    def _record_step(self, sched: SchedulerOutput, runner_out: RunnerOutput) -> None:
        stats = self.stats
        stats.num_steps += 1
        for item in sched.scheduled:
            rid = item.request.request_id
            if rid not in runner_out.sampled_token_ids:
                continue  # a partial prefill chunk
            stats.generation_tokens += len(runner_out.sampled_token_ids.get(rid, ()))
            if item.num_spec_tokens:
                accepted = runner_out.num_accepted.get(rid, 0)
                stats.num_drafts += 1
                stats.num_draft_tokens += item.num_spec_tokens
                stats.num_accepted_tokens += accepted
                for pos in range(accepted):
                    stats.accepted_per_position[pos] += 1
                stats.spec_by_source.setdefault(item.drafts.source, SourceCounts()).record(
                    item.num_spec_tokens, accepted)

    def snapshot_stats(self) -> EngineStats:
        stats = self.stats
        stats.num_running = self.scheduler.num_running
        stats.num_waiting = self.scheduler.num_waiting
        stats.kv_cache_usage = self.scheduler.kv_usage
        stats.num_preemptions = self.scheduler.num_preemptions
        stats.prefix_cache_queries = self.scheduler.num_prefix_cache_queries
        stats.prefix_cache_hits = self.scheduler.num_prefix_cache_hits
        tree = self.runner.tree_counts
        stats.num_alternatives, stats.num_alternative_draft_tokens = tree.verified, tree.draft_tokens
        stats.num_alternative_wins, stats.num_alternative_accepted_tokens = tree.wins, tree.accepted_tokens
        stats.num_alternatives_dropped = tree.dropped
        snapshot = EngineStats(**vars(stats) | {
            "accepted_per_position": list(stats.accepted_per_position),
            "spec_by_source": {source: replace(counts) for source, counts in stats.spec_by_source.items()},
            "drafter_events": self.drafter.events() if self.drafter is not None else {}})
        if self.verify_policy is not None:
            snapshot.policy = self.verify_policy.stats()
        snapshot.load = replace(self.scheduler.load.stats)
        return snapshot

    # ---- convenience for tests and benchmarks ------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion; returns each request's output token ids."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.validate_prompt(prompt, p)
            self.add_request(rid, prompt, p)
        while any(rid in self.requests for rid in ids):
            for out in self.step():
                if out.request_id in results:
                    results[out.request_id].extend(out.new_token_ids)
            for failure in self.take_failures():
                for rid in ids:
                    self.abort_request(rid)
                raise failure.as_error() from failure.error
        return [results[rid] for rid in ids]


def _merge_runner_outputs(outputs: list[RunnerOutput]) -> RunnerOutput:
    """One RunnerOutput from those of requests run one by one (disjoint ids)."""
    merged = RunnerOutput()
    for out in outputs:
        for field in dataclasses.fields(RunnerOutput):  # every field is a dict by request id
            getattr(merged, field.name).update(getattr(out, field.name))
    return merged
