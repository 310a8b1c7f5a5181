"""Scheduler: chunked prefill, batching, preemption, drafts, stops, aborts.

A fake runner stands in for the model: the "model" is a deterministic
function of the token sequence, and the "KV cache" is a dict from physical
slot to the token written there. Every step the runner checks that the
block tables give back exactly the tokens the request attends to, so a
bookkeeping bug (wrong rollback, a shared block overwritten, a stale block
after preemption) shows up as a wrong token or a failed read.
"""
import os
import random
import subprocess
import sys

import pytest

from engine.config import CacheConfig, SchedulerConfig
from scheduler.drafting import DraftingLimits
from scheduler.drafts import DraftBlock
from scheduler.output import RunnerOutput, SchedulerOutput
from scheduler.request import Request, RequestStatus, SamplingParams
from scheduler.scheduler import Scheduler
from scheduler.policies import VerifyAllPolicy

VOCAB = 50
EOS = 0


def next_token(tokens: list[int]) -> int:
    """The fake model: greedy next token of a sequence."""
    tail = tokens[-4:]
    return (sum((i + 3) * t for i, t in enumerate(tail)) + 7 * len(tokens)) % VOCAB


def check_stop(request: Request, token_id: int) -> RequestStatus | None:
    if token_id == request.eos_token_id:
        return RequestStatus.FINISHED_STOPPED
    if request.num_output_tokens >= request.sampling_params.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    return None


def solo_output(prompt: list[int], max_tokens: int, eos: int | None = EOS) -> list[int]:
    """What plain decoding of this request alone produces."""
    request = make_request("solo", prompt, max_tokens, eos)
    while True:
        request.append_output_token(next_token(request.all_token_ids))
        if check_stop(request, request.output_token_ids[-1]):
            return request.output_token_ids


def make_request(rid: str, prompt: list[int], max_tokens: int = 8, eos: int | None = EOS) -> Request:
    return Request(rid, list(prompt), SamplingParams(temperature=0, max_tokens=max_tokens),
                   eos_token_id=eos)


def make_scheduler(num_blocks=64, block_size=4, max_seqs=8, budget=64, max_model_len=512,
                   num_lookahead_slots=0, **kwargs) -> Scheduler:
    drafting = DraftingLimits(max_tokens=16, num_lookahead_slots=num_lookahead_slots,
                              costs_compute=False)
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                                     max_model_len=max_model_len),
                     CacheConfig(block_size=block_size, num_blocks=num_blocks),
                     drafting=drafting, **kwargs)


class FakeRunner:
    """Writes and reads "KV" through the block tables, samples with next_token,
    verifies drafts greedily and proposes new drafts of random quality."""

    def __init__(self, scheduler: Scheduler, rng: random.Random | None = None,
                 accept_prob: float = 0.0, max_drafts: int = 0):
        self.scheduler = scheduler
        self.block_size = scheduler.block_manager.block_size
        self.rng = rng or random.Random(0)
        self.accept_prob = accept_prob
        self.max_drafts = max_drafts
        self.kv: dict[int, int] = {}

    def execute(self, output: SchedulerOutput) -> RunnerOutput:
        result = RunnerOutput()
        for item in output.scheduled:
            fed = item.request.all_token_ids + item.spec_token_ids
            end = item.start_position + item.num_new_tokens
            # Even if all drafts and the bonus token survive, the sequence must
            # stay within max_model_len.
            assert end < self.scheduler.config.max_model_len
            for position in range(item.start_position, end):
                self._write(item.block_ids, position, fed[position])
            for position in range(end):
                assert self._read(item.block_ids, position) == fed[position], (
                    f"{item.request.request_id}: wrong KV at position {position}")
            if item.samples:
                self._sample(item, result)
        return result

    def _slot(self, block_ids: list[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def _write(self, block_ids: list[int], position: int, token: int) -> None:
        block_id = block_ids[position // self.block_size]
        assert self.scheduler.block_manager._ref_counts[block_id] == 1, "write into a shared block"
        self.kv[self._slot(block_ids, position)] = token

    def _read(self, block_ids: list[int], position: int) -> int | None:
        return self.kv.get(self._slot(block_ids, position))

    def _sample(self, item, result: RunnerOutput) -> None:
        base, emitted = item.request.all_token_ids, []
        for draft in item.spec_token_ids:
            emitted.append(next_token(base + emitted))
            if emitted[-1] != draft:
                break
        else:
            emitted.append(next_token(base + emitted))
        rid = item.request.request_id
        result.sampled_token_ids[rid] = emitted
        result.num_accepted[rid] = len(emitted) - 1

    def draft(self, scheduler: Scheduler, result: RunnerOutput) -> None:
        """The engine's drafting turn: the scheduler says who may draft and
        how much; drafts of random quality are installed."""
        sampled = [scheduler._live[rid] for rid in result.sampled_token_ids if rid in scheduler._live]
        proposals = {}
        for slot in scheduler.draft_slots(sampled):
            assert len(slot.block_ids) * self.block_size >= (
                slot.request.num_tokens + scheduler.num_lookahead_slots)
            drafts = self._propose(slot.request.all_token_ids, slot.max_tokens)
            if drafts:
                proposals[slot.request.request_id] = DraftBlock(drafts, [0.5] * len(drafts))
        scheduler.install_drafts(proposals)

    def _propose(self, tokens: list[int], room: int) -> list[int]:
        drafts = []
        for _ in range(min(room, self.rng.randint(0, self.max_drafts))):
            right = next_token(tokens + drafts)
            good = self.rng.random() < self.accept_prob
            drafts.append(right if good else (right + 1) % VOCAB)
        return drafts


def check_invariants(scheduler: Scheduler, output: SchedulerOutput) -> None:
    scheduler.block_manager.check_integrity()
    config = scheduler.config
    assert output.total_num_tokens <= config.max_num_batched_tokens
    assert scheduler.num_running <= config.max_num_seqs
    assert len({i.request.request_id for i in output.scheduled}) == len(output.scheduled)
    for request in scheduler.running:
        assert request.status is RequestStatus.RUNNING
        assert request.num_tokens - request.num_computed_tokens >= 1
        num_blocks = len(scheduler.block_manager.get_block_ids(request.request_id))
        assert num_blocks * scheduler.block_manager.block_size >= request.num_computed_tokens
    for request in scheduler.waiting:
        assert not scheduler.block_manager.has_blocks(request.request_id)
        assert request.num_computed_tokens == 0 and not request.drafts


def drive(scheduler: Scheduler, runner: FakeRunner, max_steps: int = 5000,
          between_steps=None) -> int:
    """The engine loop; returns the number of steps taken."""
    for step in range(max_steps):
        if not scheduler.has_unfinished():
            return step
        output = scheduler.schedule()
        check_invariants(scheduler, output)
        result = runner.execute(output)
        if between_steps:
            between_steps(step, output)
        scheduler.update_from_output(output, result, check_stop)
        runner.draft(scheduler, result)
        scheduler.block_manager.check_integrity()
    raise AssertionError("requests did not finish")


def step(scheduler, runner):
    output = scheduler.schedule()
    check_invariants(scheduler, output)
    result = runner.execute(output)
    updates = scheduler.update_from_output(output, result, check_stop)
    runner.draft(scheduler, result)
    scheduler.block_manager.check_integrity()
    return output, updates


# ---- batching ----------------------------------------------------------------


def test_chunked_prefill_splits_prompt_under_budget():
    scheduler = make_scheduler(budget=8)
    runner = FakeRunner(scheduler)
    request = make_request("a", list(range(1, 21)))
    scheduler.add_request(request)
    chunks = []
    for _ in range(3):
        output, updates = step(scheduler, runner)
        (item,) = output.scheduled
        chunks.append((item.start_position, item.num_query_tokens, request.num_output_tokens))
    # Only the chunk that reaches the end of the prompt samples a token.
    assert chunks == [(0, 8, 0), (8, 8, 0), (16, 4, 1)]
    assert request.num_computed_tokens == 20 and request.num_output_tokens == 1
    assert updates == [(request, request.output_token_ids)]


def test_budget_is_shared_running_first():
    scheduler = make_scheduler(budget=10)
    runner = FakeRunner(scheduler)
    scheduler.add_request(make_request("a", [1] * 6, max_tokens=20))
    step(scheduler, runner)
    scheduler.add_request(make_request("b", [2] * 30))
    output, _ = step(scheduler, runner)
    assert [(i.request.request_id, i.num_query_tokens) for i in output.scheduled] == \
        [("a", 1), ("b", 9)]


def test_new_request_joins_running_batch_and_all_match_solo():
    scheduler = make_scheduler()
    runner = FakeRunner(scheduler)
    first = make_request("a", [5, 6, 7], max_tokens=12, eos=None)
    scheduler.add_request(first)
    step(scheduler, runner)
    step(scheduler, runner)
    second = make_request("b", [9, 9, 9, 9, 9], max_tokens=6, eos=None)
    scheduler.add_request(second)
    output, _ = step(scheduler, runner)
    assert [i.request.request_id for i in output.scheduled] == ["a", "b"]
    drive(scheduler, runner)
    assert first.output_token_ids == solo_output([5, 6, 7], 12, None)
    assert second.output_token_ids == solo_output([9] * 5, 6, None)


def test_finished_request_leaves_at_once_and_frees_blocks():
    scheduler = make_scheduler(num_blocks=8)
    runner = FakeRunner(scheduler)
    request = make_request("a", list(range(1, 10)), max_tokens=2, eos=None)
    scheduler.add_request(request)
    step(scheduler, runner)
    _, updates = step(scheduler, runner)
    assert updates == [(request, request.output_token_ids[-1:])]
    assert request.status is RequestStatus.FINISHED_LENGTH
    assert scheduler.num_running == 0 and not scheduler.has_unfinished()
    assert scheduler.kv_usage == 0.0
    assert scheduler.schedule().freed_request_ids == ["a"]


def test_max_num_seqs_is_respected():
    scheduler = make_scheduler(max_seqs=2)
    runner = FakeRunner(scheduler)
    for index in range(5):
        scheduler.add_request(make_request(f"r{index}", [index + 1] * 3, max_tokens=3, eos=None))
    output, _ = step(scheduler, runner)
    assert len(output.scheduled) == 2 and scheduler.num_waiting == 3
    drive(scheduler, runner)


def test_prefix_cache_hit_skips_cached_tokens():
    scheduler = make_scheduler()
    runner = FakeRunner(scheduler)
    prompt = list(range(1, 12))
    scheduler.add_request(make_request("a", prompt, max_tokens=3, eos=None))
    drive(scheduler, runner)
    second = make_request("b", prompt + [30], max_tokens=3, eos=None)
    scheduler.add_request(second)
    output, _ = step(scheduler, runner)
    assert output.scheduled[0].start_position == output.scheduled[0].num_cached_prefix == 8
    assert (scheduler.num_prefix_cache_queries, scheduler.num_prefix_cache_hits) == (11 + 12, 8)
    output, _ = step(scheduler, runner)
    assert output.scheduled[0].num_cached_prefix == 0  # only the admitting step says so
    drive(scheduler, runner)
    assert second.output_token_ids == solo_output(prompt + [30], 3, None)


# ---- preemption --------------------------------------------------------------


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_then_recompute_gives_solo_outputs(caching):
    scheduler = make_scheduler(num_blocks=12, budget=16, enable_prefix_caching=caching)
    runner = FakeRunner(scheduler)
    prompts = [[i + 1] * (3 + 2 * i) for i in range(5)]
    requests = [make_request(f"r{i}", p, max_tokens=14, eos=None) for i, p in enumerate(prompts)]
    for request in requests:
        scheduler.add_request(request)
    drive(scheduler, runner)
    assert scheduler.num_preemptions > 0
    for request, prompt in zip(requests, prompts):
        assert request.status is RequestStatus.FINISHED_LENGTH
        assert request.output_token_ids == solo_output(prompt, 14, None)


def test_preempts_most_recent_and_requeues_it_first():
    scheduler = make_scheduler(num_blocks=4, budget=64)
    runner = FakeRunner(scheduler)
    old = make_request("old", [1] * 8, max_tokens=20, eos=None)
    new = make_request("new", [2] * 8, max_tokens=20, eos=None)
    scheduler.add_request(old)
    scheduler.add_request(new)
    step(scheduler, runner)  # each holds 2 blocks: the cache is full
    scheduler.add_request(make_request("later", [3] * 3))
    output, _ = step(scheduler, runner)  # old needs a 3rd block
    assert [i.request.request_id for i in output.scheduled] == ["old"]
    assert new.status is RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert [r.request_id for r in scheduler.waiting] == ["new", "later"]
    assert output.freed_request_ids == ["new"]  # in the very step that preempted it


def test_lone_request_that_outgrows_cache_is_preempted_then_finished():
    scheduler = make_scheduler(num_blocks=2)
    runner = FakeRunner(scheduler)
    request = make_request("a", [1] * 5, max_tokens=100, eos=None)
    scheduler.add_request(request)
    drive(scheduler, runner)
    assert request.status is RequestStatus.FINISHED_LENGTH
    assert request.num_tokens == 8 + 1 and request.num_preemptions == 1
    assert request.output_token_ids == solo_output([1] * 5, 100, None)[:4]


def test_requests_that_can_never_fit_are_finished_not_looped_on():
    scheduler = make_scheduler(num_blocks=4, max_model_len=32)
    runner = FakeRunner(scheduler)
    too_big_for_cache = make_request("cache", [1] * 17)
    too_long = make_request("len", [1] * 32)
    fine = make_request("ok", [2] * 3, max_tokens=2, eos=None)
    for request in (too_big_for_cache, too_long, fine):
        scheduler.add_request(request)
    output = scheduler.schedule()
    assert [i.request.request_id for i in output.scheduled] == ["ok"]
    assert set(output.freed_request_ids) == {"cache", "len"}
    assert too_big_for_cache.status is RequestStatus.FINISHED_ABORTED
    assert too_long.status is RequestStatus.FINISHED_ABORTED
    scheduler.update_from_output(output, runner.execute(output), check_stop)
    drive(scheduler, runner)
    assert fine.num_output_tokens == 2


def test_max_model_len_stops_generation():
    scheduler = make_scheduler(max_model_len=10)
    runner = FakeRunner(scheduler, accept_prob=1.0, max_drafts=4)
    request = make_request("a", [1] * 6, max_tokens=100, eos=None)
    scheduler.add_request(request)
    drive(scheduler, runner)
    assert request.status is RequestStatus.FINISHED_LENGTH and request.num_tokens == 10


# ---- drafts ------------------------------------------------------------------


def prefilled_with_drafts(drafts: list[int], **kwargs) -> tuple[Scheduler, Request]:
    scheduler = make_scheduler(**kwargs)
    request = make_request("a", [1, 2, 3, 4, 5, 6], max_tokens=50, eos=None)
    scheduler.add_request(request)
    while not request.output_token_ids:  # prefill, in chunks if the budget is small
        output = scheduler.schedule()
        result = RunnerOutput()
        if output.scheduled[0].samples:
            result = RunnerOutput(sampled_token_ids={"a": [7]}, num_accepted={"a": 0})
        scheduler.update_from_output(output, result, check_stop)
    (slot,) = scheduler.draft_slots([request])
    assert slot.max_tokens >= len(drafts)
    scheduler.install_drafts({"a": DraftBlock(drafts, [0.9] * len(drafts))})
    return scheduler, request


def verify(scheduler, emitted: list[int]) -> tuple[SchedulerOutput, list]:
    output = scheduler.schedule()
    result = RunnerOutput(sampled_token_ids={"a": emitted}, num_accepted={"a": len(emitted) - 1})
    updates = scheduler.update_from_output(output, result, check_stop)
    scheduler.block_manager.check_integrity()
    return output, updates


def test_all_drafts_rejected_rolls_back_kv_and_blocks():
    scheduler, request = prefilled_with_drafts([10, 11, 12])
    output, _ = verify(scheduler, [20])
    (item,) = output.scheduled
    assert (item.start_position, item.num_query_tokens, item.num_spec_tokens) == (6, 1, 3)
    assert len(item.block_ids) == 3  # slots for 6 + 1 + 3 tokens
    assert request.output_token_ids == [7, 20]
    assert request.num_computed_tokens == 7
    assert len(scheduler.block_manager.get_block_ids("a")) == 2
    assert (request.num_spec_steps, request.num_draft_tokens, request.num_accepted_tokens) == \
        (1, 3, 0)
    assert not request.drafts


def test_partly_accepted_drafts_advance_computed_tokens():
    scheduler, request = prefilled_with_drafts([10, 11, 12])
    _, updates = verify(scheduler, [10, 11, 30])
    assert updates == [(request, [10, 11, 30])]
    assert request.num_computed_tokens == 9 and request.num_tokens == 10
    assert request.num_accepted_tokens == 2
    next_item = scheduler.schedule().scheduled[0]
    assert (next_item.start_position, next_item.num_query_tokens) == (9, 1)


def test_all_accepted_gives_bonus_token():
    scheduler, request = prefilled_with_drafts([10, 11])
    verify(scheduler, [10, 11, 12])
    assert request.num_computed_tokens == 9 and request.num_tokens == 10
    assert request.num_accepted_tokens == 2


def test_check_stop_cuts_inside_accepted_block():
    scheduler, request = prefilled_with_drafts([10, 11, 12])
    request.eos_token_id = 11
    _, updates = verify(scheduler, [10, 11, 12, 13])
    assert updates == [(request, [10, 11])]
    assert request.output_token_ids == [7, 10, 11]
    assert request.status is RequestStatus.FINISHED_STOPPED
    assert scheduler.kv_usage == 0.0 and not scheduler.has_unfinished()


def test_stop_cut_caches_only_blocks_of_kept_tokens():
    scheduler, request = prefilled_with_drafts([10, 11, 12, 14, 15])
    request.eos_token_id = 10
    verify(scheduler, [10, 11, 12, 14, 15, 16])  # KV now covers 12 positions
    assert request.num_tokens == 8
    assert len(scheduler.block_manager._cached) == 2


def test_max_tokens_inside_accepted_block():
    scheduler, request = prefilled_with_drafts([10, 11, 12])
    request.sampling_params = SamplingParams(temperature=0, max_tokens=3)
    _, updates = verify(scheduler, [10, 11, 12, 13])
    assert updates == [(request, [10, 11])]
    assert request.status is RequestStatus.FINISHED_LENGTH


def test_lookahead_slots_are_reserved_when_sampling():
    scheduler, request = prefilled_with_drafts([10], num_lookahead_slots=4)
    item = scheduler.schedule().scheduled[0]
    assert len(item.block_ids) == 3  # 6 + 1 + 1 draft + 4 lookahead = 12 slots


def test_lookahead_dropped_rather_than_cutting_a_request_short():
    scheduler = make_scheduler(num_blocks=3, num_lookahead_slots=4)
    runner = FakeRunner(scheduler)
    request = make_request("a", [1] * 5, max_tokens=100, eos=None)
    scheduler.add_request(request)
    drive(scheduler, runner)
    assert request.num_tokens == 3 * 4 + 1  # decoded until the cache itself was full


def test_drafts_dropped_before_anyone_is_preempted():
    scheduler, request = prefilled_with_drafts([10, 11, 12], num_blocks=2)
    output = scheduler.schedule()
    (item,) = output.scheduled
    assert (item.num_query_tokens, item.num_spec_tokens) == (1, 0)
    assert scheduler.num_preemptions == 0


class GreedyPolicy(VerifyAllPolicy):
    """Asks for more than allowed, to check the scheduler's clamping."""

    def choose_lengths(self, candidates, budget_left, num_emitting=0, load=None):
        return {r.request_id: 99 for r in candidates}


def test_policy_answer_is_clamped_to_drafts_and_budget():
    scheduler, request = prefilled_with_drafts([10, 11, 12], budget=3,
                                               verify_policy=GreedyPolicy())
    item = scheduler.schedule().scheduled[0]
    assert (item.num_query_tokens, item.num_spec_tokens) == (1, 2)


def test_verify_all_policy_caps_by_budget_in_order():
    requests = [make_request(f"r{i}", [1]) for i in range(3)]
    for request in requests:
        request.drafts = DraftBlock([1, 2, 3], [0.5] * 3)
    assert VerifyAllPolicy().choose_lengths(requests, 5) == {"r0": 3, "r1": 2, "r2": 0}


def test_drafts_give_solo_outputs():
    scheduler = make_scheduler(num_blocks=20, budget=12)
    runner = FakeRunner(scheduler, random.Random(3), accept_prob=0.7, max_drafts=5)
    prompts = [[i + 2] * (2 + i) for i in range(4)]
    requests = [make_request(f"r{i}", p, max_tokens=25) for i, p in enumerate(prompts)]
    for request in requests:
        scheduler.add_request(request)
    drive(scheduler, runner)
    assert sum(r.num_accepted_tokens for r in requests) > 0
    for request, prompt in zip(requests, prompts):
        assert request.output_token_ids == solo_output(prompt, 25)


# ---- aborts ------------------------------------------------------------------


def test_abort_frees_blocks_at_once():
    scheduler = make_scheduler()
    runner = FakeRunner(scheduler)
    running = make_request("run", [1] * 9, max_tokens=20)
    waiting = make_request("wait", [2] * 9)
    scheduler.add_request(running)
    output = scheduler.schedule()
    result = runner.execute(output)
    scheduler.add_request(waiting)
    assert scheduler.abort_request("run") and scheduler.abort_request("wait")
    assert not scheduler.abort_request("run") and not scheduler.abort_request("nobody")
    assert scheduler.kv_usage == 0.0 and not scheduler.has_unfinished()
    assert running.status is RequestStatus.FINISHED_ABORTED
    assert waiting.status is RequestStatus.FINISHED_ABORTED
    # The step in flight when the abort came is ignored for that request.
    assert scheduler.update_from_output(output, result, check_stop) == []
    assert running.num_output_tokens == 0
    assert scheduler.schedule().freed_request_ids == ["run", "wait"]
    scheduler.block_manager.check_integrity()


# ---- soak --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_soak(seed):
    rng = random.Random(seed)
    scheduler = make_scheduler(num_blocks=rng.choice([10, 24]), block_size=4,
                               max_seqs=rng.choice([3, 6]), budget=rng.choice([8, 24]),
                               num_lookahead_slots=rng.choice([0, 3]))
    runner = FakeRunner(scheduler, rng, accept_prob=0.6, max_drafts=4)
    shared = [rng.randrange(1, VOCAB) for _ in range(9)]
    requests = []

    def add_some(count):
        for _ in range(count):
            prefix = shared[:rng.randint(0, 9)]
            prompt = prefix + [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 12))]
            request = make_request(f"r{len(requests)}", prompt, max_tokens=rng.randint(1, 20))
            requests.append(request)
            scheduler.add_request(request)

    def between_steps(step_index, output):
        if step_index < 60 and rng.random() < 0.3:
            add_some(rng.randint(1, 3))
        if rng.random() < 0.05 and requests:
            scheduler.abort_request(rng.choice(requests).request_id)

    add_some(5)
    drive(scheduler, runner, between_steps=between_steps)
    assert scheduler.kv_usage == 0.0 and not scheduler.running and not scheduler.waiting
    capacity = scheduler.block_manager.num_blocks * scheduler.block_manager.block_size
    for request in requests:
        assert request.is_finished
        solo = solo_output(request.prompt_token_ids, request.sampling_params.max_tokens)
        assert request.output_token_ids == solo[:request.num_output_tokens]
        # Only an abort, or outgrowing the whole cache, may cut a request short.
        cut_short = request.output_token_ids != solo
        outgrew_cache = request.num_tokens == capacity + 1
        assert not cut_short or request.status is RequestStatus.FINISHED_ABORTED or (
            request.status is RequestStatus.FINISHED_LENGTH and outgrew_cache)


def test_scheduler_package_imports_no_torch_nor_engine():
    code = ("import sys, scheduler.scheduler, scheduler.block_manager, scheduler.policies;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'engine', 'server')];"
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
