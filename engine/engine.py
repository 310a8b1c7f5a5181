"""The engine loop: take new requests -> schedule -> execute -> update -> emit.

Synchronous and single-threaded on purpose; `engine/client.py` runs it in a
background thread and bridges it to asyncio.
"""
from __future__ import annotations

import logging
import time

import torch

from engine.config import EngineConfig
from engine.device import resolve_dtype
from engine.kv_cache import kv_bytes_per_token
from engine.model_runner import ModelRunner
from engine.models.loader import LoadedModel, load_model
from engine.output_processor import OutputProcessor
from engine.outputs import EngineStats, RequestOutput
from engine.profiler import load_or_profile
from engine.sampler import make_generator
from engine.spec.base import DraftInput, Drafter
from engine.spec.factory import build_drafter
from scheduler.request import Request, RequestStatus, SamplingParams
from scheduler.load import StepCostModel
from scheduler.scheduler import Scheduler
from scheduler.verify_policy import AdaptivePolicy, StaticPolicy, VerifyPolicy

log = logging.getLogger("specserve.engine")


class LLMEngine:
    """Owns the model, the scheduler, the drafter and per-request text state."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None,
                 step_cost: StepCostModel | None = None):
        self.config = config
        dtype = resolve_dtype(config.dtype, config.device)
        self.loaded = loaded or load_model(config.model, dtype, config.device)
        if self.loaded.model.batch_invariant != config.batch_invariant:
            self.loaded.model.use_inference_kernels(config.batch_invariant)
        self.tokenizer = self.loaded.tokenizer
        self.model_config = self.loaded.config
        self.max_model_len = min(config.scheduler.max_model_len, self.model_config.max_position_embeddings)
        cache = config.cache
        self.scheduler = Scheduler(config.scheduler, cache)
        self.runner = ModelRunner(self.loaded.model, self.model_config, cache.num_blocks,
                                  cache.block_size, dtype, config.device)
        self.drafter = build_drafter(config, self.loaded, cache.num_blocks, dtype)
        self.step_cost = step_cost
        self.verify_policy = self._build_verify_policy()
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self.draft_generators: dict[str, torch.Generator] = {}
        self.stats = EngineStats(accepted_per_position=[0] * config.speculative.num_speculative_tokens)
        log.info("engine ready: %s, %d KV blocks x %d tokens (%.1f MiB)", self.loaded.path,
                 cache.num_blocks, cache.block_size,
                 cache.num_tokens * kv_bytes_per_token(self.model_config, dtype) / 2**20)

    def _build_verify_policy(self) -> VerifyPolicy | None:
        spec = self.config.speculative
        if self.drafter is None:
            return None
        if spec.policy == "static":
            policy = StaticPolicy(spec.num_speculative_tokens)
        else:
            if self.step_cost is None:
                self.step_cost = load_or_profile(
                    self.runner, self.loaded.path, self.config.device, self.config.dtype,
                    self.config.scheduler.max_num_batched_tokens, self.config.scheduler.max_num_seqs)
            policy = AdaptivePolicy(self.step_cost, self.config.scheduler.max_num_batched_tokens,
                                    asynchronous=spec.policy == "adaptive-async",
                                    max_draft=spec.num_speculative_tokens)
        self.scheduler.verify_policy = policy
        return policy

    @property
    def drafter(self) -> Drafter | None:
        return self._drafter

    @drafter.setter
    def drafter(self, drafter: Drafter | None) -> None:
        """Installing a drafter also tells the scheduler how far it writes KV
        ahead and the runner which target layers it reads."""
        self._drafter = drafter
        self.scheduler.num_lookahead_slots = drafter.num_lookahead_slots if drafter else 0
        self.runner.aux_layers = drafter.aux_layers if drafter else ()
        if drafter and drafter.aux_layers:
            # A prefix-cache hit skips the target over cached tokens, so their
            # hidden states would never reach a drafter that reads them.
            self.scheduler.block_manager.enable_prefix_caching = False

    # ---- requests in -------------------------------------------------------
    def validate_prompt(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a prompt the engine can never serve."""
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

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        self.validate_prompt(prompt_token_ids, params)
        request = Request(request_id, list(prompt_token_ids), params,
                          eos_token_id=self.tokenizer.eos_token_id)
        self.requests[request_id] = request
        self.stats.prompt_tokens += len(prompt_token_ids)
        self.outputs.add_request(request)
        self.scheduler.add_request(request)

    def abort_request(self, request_id: str) -> bool:
        """Abort at once: blocks are freed now; runner state at the next step."""
        if self.requests.pop(request_id, None) is None:
            return False
        self.scheduler.abort_request(request_id)
        self._forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- one step ----------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        sched = self.scheduler.schedule()
        if self.drafter:
            self.drafter.free(sched.freed_request_ids)
        if sched.is_empty:
            self.runner.free(sched.freed_request_ids)
            return self._collect_unscheduled_finished()
        runner_out = self.runner.execute(sched)
        updates = self.scheduler.update_from_output(sched, runner_out, self.outputs.check_stop)
        self._record_step(sched, runner_out)
        self._feed_back(sched, runner_out)
        sampled = [r for r, _ in updates if not r.is_finished
                   and r.request_id in runner_out.sampled_token_ids]
        self._propose_drafts(sampled)
        if self.step_cost is not None:
            # The whole step, drafting included: what a bigger batch really costs.
            self.step_cost.observe(sched.total_num_tokens, time.perf_counter() - started)
        return self._emit(updates, runner_out) + self._collect_unscheduled_finished()

    def _emit(self, updates, runner_out) -> list[RequestOutput]:
        outputs = []
        for request, new_tokens in updates:
            logprobs = runner_out.logprobs.get(request.request_id)
            if logprobs is not None:
                logprobs = logprobs[: len(new_tokens)]
            outputs.append(self.outputs.make_output(request, new_tokens, logprobs))
            if request.is_finished:
                self.requests.pop(request.request_id, None)
                self._forget(request.request_id)
        return outputs

    def _collect_unscheduled_finished(self) -> list[RequestOutput]:
        """Requests the scheduler finished on its own (e.g. could never fit)."""
        done = [r for r in self.requests.values() if r.is_finished]
        outputs = [self.outputs.make_output(r, [], None) for r in done]
        for r in done:
            self.requests.pop(r.request_id, None)
            self._forget(r.request_id)
        return outputs

    def _forget(self, request_id: str) -> None:
        self.outputs.remove(request_id)
        self.runner.forget(request_id)
        if isinstance(self.verify_policy, AdaptivePolicy):
            self.verify_policy.forget(request_id)
        self.draft_generators.pop(request_id, None)

    # ---- drafting ----------------------------------------------------------
    def _propose_drafts(self, requests: list[Request]) -> None:
        """Draft for the next step; drafts are only made where they can be
        verified (room left in max_tokens and context, KV slots reserved)."""
        if not self.drafter:
            return
        inputs = [item for r in requests if (item := self._draft_input(r)) is not None]
        if not inputs:
            return
        tables = {i.request.request_id: self.scheduler.block_manager.get_block_ids(i.request.request_id)
                  for i in inputs}
        proposals = self.drafter.propose(inputs, tables)
        for item in inputs:
            rid = item.request.request_id
            proposal = proposals.get(rid)
            item.request.spec_token_ids = proposal.token_ids if proposal else []
            item.request.spec_confidences = proposal.confidences if proposal else []
            self.runner.pending_draft_probs[rid] = proposal.probs if proposal else None

    def _draft_input(self, request: Request) -> DraftInput | None:
        params = request.sampling_params
        if not params.speculative:
            return None
        max_draft = self.config.speculative.num_speculative_tokens
        if isinstance(self.verify_policy, AdaptivePolicy) and self.drafter.costs_compute:
            if not self.verify_policy.should_draft(request.request_id):
                return None
            max_draft = self.verify_policy.draft_length(request.request_id, max_draft)
        room = min(max_draft,
                   params.max_tokens - request.num_output_tokens - 1,
                   self.max_model_len - request.num_tokens - 1)
        if room <= 0:
            return None
        slots = request.num_tokens + self.drafter.num_lookahead_slots
        if self.scheduler.block_manager.allocate_slots(request.request_id, slots) is None:
            return None  # no KV room to draft into: decode plainly this step
        gen = self.draft_generators.get(request.request_id)
        if gen is None:
            seed = None if params.seed is None else params.seed + 7919
            gen = self.draft_generators[request.request_id] = make_generator(seed, self.config.device)
        hidden = self.runner.take_hidden(request.request_id) if self.drafter.aux_layers else None
        return DraftInput(request, room, gen, hidden)

    def _feed_back(self, sched, runner_out) -> None:
        """Realised acceptance goes back to the adaptive policy."""
        if isinstance(self.verify_policy, AdaptivePolicy):
            for item in sched.scheduled:
                if item.num_spec_tokens:
                    self.verify_policy.observe(item.request.request_id, item.num_spec_tokens,
                                               runner_out.num_accepted.get(item.request.request_id, 0))

    # ---- statistics --------------------------------------------------------
    def _record_step(self, sched, runner_out) -> None:
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

    def snapshot_stats(self) -> EngineStats:
        stats = self.stats
        stats.num_running = self.scheduler.num_running
        stats.num_waiting = self.scheduler.num_waiting
        stats.kv_cache_usage = self.scheduler.kv_usage
        stats.num_preemptions = self.scheduler.num_preemptions
        snapshot = EngineStats(**vars(stats) | {"accepted_per_position": list(stats.accepted_per_position)})
        if isinstance(self.verify_policy, AdaptivePolicy):
            self._add_policy_stats(snapshot, self.verify_policy)
        return snapshot

    @staticmethod
    def _add_policy_stats(snapshot: EngineStats, policy: AdaptivePolicy) -> None:
        report = policy.calibrator.report()
        snapshot.verify_length_counts = list(policy.length_counts)
        snapshot.calibration_observations = report.observations
        snapshot.calibration_predicted = report.mean_predicted
        snapshot.calibration_realised = report.mean_realised
        snapshot.calibration_error = report.expected_calibration_error
        snapshot.step_cost_table = policy.cost.table()

    # ---- convenience for tests and benchmarks ------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion; returns each request's output token ids."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.add_request(rid, prompt, p)
        while any(rid in self.requests for rid in ids):
            for out in self.step():
                if out.request_id in results:
                    results[out.request_id].extend(out.new_token_ids)
        return [results[rid] for rid in ids]
