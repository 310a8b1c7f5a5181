"""The hybrid drafter: lossless greedy decoding through the engine, and a
choice that reads only what is known before the head draws."""
from __future__ import annotations

import random

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.base import DraftInput
from engine.spec.head_payoff import HeadPayoff, PositionRates
from engine.spec.hybrid import EXPLORE_EVERY, EXPLORE_EVERY_MAX, STEADY_FOLD_POSITIONS, HybridDrafter, choose
from engine.spec.ngram import NgramDrafter
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.drafts import DraftBlock, DraftEconomics, expected_accepted
from scheduler.load import StepCostModel
from scheduler.request import Request, SamplingParams
from tests.engine.spec.test_head_drafter import BLOCK, make_drafter, make_engine

COPY = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(a, b):"
PROMPTS = [COPY, "Hello", "The quick brown fox jumps over the lazy dog. The quick brown fox", "Once upon"]


def hybrid_for(loaded, method):
    return HybridDrafter(make_drafter(loaded, method), NgramDrafter(1, 4))


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_greedy_hybrid_equals_plain_decoding_alone_and_sixteen_at_once(tiny_dir, tiny_target, method):
    plain_engine = make_engine(tiny_dir)
    tok = plain_engine.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = plain_engine.generate(prompts, params)
    hybrid = hybrid_for(plain_engine.loaded, method)
    engine = make_engine(tiny_dir, plain_engine.loaded, hybrid)
    assert [engine.generate([p], params)[0] for p in prompts] == plain
    engine.step()  # finished requests are reported freed at the next schedule
    config = EngineConfig(model=str(tiny_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=512),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512),
                          speculative=SpeculativeConfig(num_speculative_tokens=BLOCK, policy="static"))
    wide = LLMEngine(config, loaded=plain_engine.loaded, step_cost=StepCostModel.flat(), drafter=hybrid)
    assert wide.generate(prompts * 4, params) == plain * 4
    # Both drafters were chosen (the copy prompt for n-gram, free text for the head) and verified.
    assert hybrid.choices["ngram"] > 0 and hybrid.choices[method] > 0
    assert sum(hybrid.head_rates.trials) > 0
    # The engine's counters per source add up to its totals (/metrics labels them).
    stats = wide.snapshot_stats()
    assert set(stats.spec_by_source) == {"ngram", method}
    for total, attribute in ((stats.num_drafts, "num_drafts"), (stats.num_draft_tokens, "num_draft_tokens"),
                             (stats.num_accepted_tokens, "num_accepted_tokens")):
        assert sum(getattr(counts, attribute) for counts in stats.spec_by_source.values()) == total > 0
    assert stats.drafter_events == hybrid.events()
    assert set(stats.drafter_events) == {"head_skipped_threshold", "head_skipped_cost", "head_explored"}
    wide.step()
    assert hybrid.pending == {} and hybrid.head.states == {}


def test_served_by_method_flag(tmp_path, tiny_dir, tiny_target):
    """--speculative-method hybrid --draft-model CHECKPOINT, adaptive policy."""
    from engine.spec.heads.checkpoint import save_head

    save_head(make_drafter(tiny_target, "dspark").head, str(tmp_path / "ckpt"))
    spec = SpeculativeConfig(method="hybrid", draft_model=str(tmp_path / "ckpt"), num_speculative_tokens=BLOCK)
    config = EngineConfig(model=str(tiny_dir), dtype="float32", cache=CacheConfig(block_size=8, num_blocks=256),
                          scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512),
                          speculative=spec, machine_counters=False)
    engine = LLMEngine(config, step_cost=StepCostModel.flat())
    assert isinstance(engine.drafter, HybridDrafter) and engine.drafter.aux_layers
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    assert engine.generate(prompts, params) == make_engine(tiny_dir, engine.loaded).generate(prompts, params)
    with pytest.raises(ValueError, match="draft-model"):
        SpeculativeConfig(method="hybrid")


class _StubHead:
    """A head drafter whose block is given: first confidence fixed, the
    drawn tokens and later confidences varied by the test."""

    name, aux_layers, max_draft_tokens = "dspark", (1,), BLOCK

    def __init__(self):
        self.block = None
        self.calls = 0
        self.last_fold = (0.0, 0)
        self.clock = None  # a fake perf_counter to advance by `seconds` per run
        self.seconds = 0.0
        self.backlogs = {}  # request id -> features not folded in yet (default 0)

    def backlog(self, request):
        return self.backlogs.get(request.request_id, 0)

    def propose(self, inputs):
        self.calls += 1
        self.asked = [item.max_tokens for item in inputs]
        self.ran_for = [item.request.request_id for item in inputs]
        if self.clock is not None:
            self.clock[0] += self.seconds
        return {item.request.request_id: self.block.prefix(item.max_tokens) for item in inputs}

    def absorb(self, request, hidden):
        pass

    def forget(self, request_ids):
        pass


def test_choice_reads_only_the_heads_first_confidence():
    """Whatever the head drew (tokens, and the confidences after the first,
    which depend on them), the same source is chosen: otherwise sampled
    output is biased (speculation.md s.4). Fails for a rule that reads them."""
    rng = random.Random(0)
    request = Request("r", [5, 6, 7, 5, 6], SamplingParams(temperature=1.0))
    chosen_sources = set()
    for trial in range(200):
        head = _StubHead()
        hybrid = HybridDrafter(head, NgramDrafter(1, 4))
        hybrid.head_rates = PositionRates(trials=[50.0] * BLOCK, accepted=[rng.uniform(5, 45) for _ in range(BLOCK)])
        first = rng.uniform(0.05, 0.95)
        picks = set()
        for _ in range(6):  # six different draws of the same first-position distribution
            tokens = [rng.randrange(100) for _ in range(BLOCK)]
            head.block = DraftBlock(tokens, [first] + [rng.uniform(0.0, 1.0) for _ in range(BLOCK - 1)],
                                    torch.ones(BLOCK, 100) / 100, "dspark")
            item = DraftInput(request, BLOCK, torch.Generator(), [])
            proposal = hybrid.propose([item]).get("r")
            picks.add(proposal.source if proposal else None)
            hybrid.pending.clear()
        assert len(picks) == 1, (trial, picks)
        chosen_sources |= picks
    assert chosen_sources == {"ngram", "dspark"}  # the case is not trivial


def test_choice_prefers_the_larger_expected_acceptance():
    rates = PositionRates(trials=[10.0] * 4, accepted=[8.0, 5.0, 5.0, 5.0])
    ngram = DraftBlock([1, 2, 3], [0.9, 0.9, 0.9], None, "ngram")
    weak, strong = (DraftBlock([4, 5, 6, 7], [c, 0.1, 0.1, 0.1], None, "dspark") for c in (0.2, 0.99))
    assert expected_accepted(ngram.confidences) == pytest.approx(0.9 + 0.81 + 0.729)
    assert choose(ngram, weak, rates, 4) is ngram
    assert choose(ngram, strong, PositionRates(trials=[10.0] * 4, accepted=[10.0] * 4), 4) is strong
    assert choose(None, weak, rates, 4) is weak and choose(ngram, None, rates, 4) is ngram


def _load_case(**hybrid_options):
    """A hybrid with a stub head, and a proposer for a copying request (n-gram
    matches) and a free-text one (no match) under given economics."""
    head = _StubHead()
    hybrid = HybridDrafter(head, NgramDrafter(1, 4), **hybrid_options)
    hybrid.head_rates = PositionRates(trials=[10.0], accepted=[4.0])  # first-draft acceptance 0.42
    head.block = DraftBlock([9] * BLOCK, [0.99] * BLOCK, None, "dspark")
    copying = Request("r", [5, 6, 7, 5, 6], SamplingParams(temperature=0.0))  # n-gram proposes 7 ...
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))  # no n-gram match

    def propose(**economics):
        terms = DraftEconomics(**economics)
        proposals = hybrid.propose([DraftInput(r, BLOCK, torch.Generator(), [], economics=terms)
                                    for r in (copying, free)])
        hybrid.pending.clear()
        return {rid: block.source for rid, block in proposals.items()}

    return hybrid, head, propose


def test_the_head_is_not_run_when_its_first_draft_would_not_be_verified_at_the_load():
    """Above the policy's first-draft threshold (a busy machine) the head is
    skipped and n-gram's block stands alone; below it, the head runs."""
    hybrid, head, propose = _load_case()
    assert propose(first_draft_threshold=0.5) == {"r": "ngram"} and head.calls == 0
    assert hybrid.head_skipped == {"threshold": 2, "cost": 0}
    assert propose(first_draft_threshold=0.3) == {"r": "dspark", "f": "dspark"} and head.calls == 1


def test_a_run_after_a_skip_is_not_charged_for_folding_the_backlog(monkeypatch):
    """A run that folds the features of many skipped steps is charged only
    the steady share of its folding (STEADY_FOLD_POSITIONS per request):
    otherwise the longer the head is skipped, the dearer it looks."""
    import engine.spec.hybrid as hybrid_module

    hybrid, head, propose = _load_case()
    head.clock = [0.0]
    monkeypatch.setattr(hybrid_module.time, "perf_counter", lambda: head.clock[0])
    head.seconds, head.last_fold = 0.1, (0.08, 40)  # 80 of its 100 ms folded 40 positions for 2 requests
    propose(accepted_token_seconds=1.0)
    steady = 2 * STEADY_FOLD_POSITIONS
    charged = 0.1 - 0.08 * (40 - steady) / 40
    ran = [payoff for payoff in hybrid.payoffs if payoff.timed_runs]  # the bands of r and f
    assert len(ran) == 2 and all(payoff.seconds_per_run == pytest.approx(charged / 2) for payoff in ran)
    head.last_fold = (0.01, steady)  # a run in steady state: all of it counts
    propose(accepted_token_seconds=1.0)
    keep = hybrid.payoffs[0].keep
    assert sum(payoff.seconds for payoff in hybrid.payoffs) == pytest.approx(charged * keep + 0.1)


def test_the_head_is_not_run_when_its_runs_do_not_pay_but_is_tried_now_and_then():
    """Accepted drafts per run x what a token is worth at the load against
    the measured seconds per run plus what its verified drafts add to the
    step; a skipped run happens anyway once in EXPLORE_EVERY steps, so the
    figures can change."""
    hybrid, head, propose = _load_case()
    # Per run: 0.5 accepted, 2 verified, 10 ms of drafting.
    hybrid.payoffs = [HeadPayoff(runs=10.0, gained=5.0, verified=20.0, seconds=0.1, timed_runs=10.0)
                      for _ in hybrid.payoffs]  # every band alike
    assert hybrid.payoffs[0].pays(DraftEconomics(accepted_token_seconds=0.03))  # 15 ms of worth per run
    assert not hybrid.payoffs[0].pays(DraftEconomics(accepted_token_seconds=0.03, verify_token_seconds=0.003))
    assert propose(accepted_token_seconds=0.03) == {"r": "dspark", "f": "dspark"}
    runs = head.calls
    steps = [propose(accepted_token_seconds=0.01) for _ in range(EXPLORE_EVERY)]  # 2 requests a step
    assert steps.count({"r": "ngram"}) == EXPLORE_EVERY - 1  # about 5 ms of worth: does not pay
    assert head.calls == runs + 1 and hybrid.explored == 1 and head.ran_for == ["r"]
    assert hybrid.head_skipped["cost"] == 2 * EXPLORE_EVERY - 1


def test_a_draft_is_worth_the_share_of_a_step_it_saves_a_request_that_n_gram_speeds_along():
    """One more accepted draft saves a request 1 / (its tokens per step) of a
    step: a head that pays for a request emitting a token a step does not
    pay where n-gram already brings two a step."""
    hybrid, head, propose = _load_case()
    hybrid.payoffs = [HeadPayoff(runs=10.0, gained=5.0, verified=0.0, seconds=0.1, timed_runs=10.0)
                      for _ in hybrid.payoffs]  # half a draft gained for 10 ms a run
    assert propose(accepted_token_seconds=0.03) == {"r": "dspark", "f": "dspark"}  # 15 ms of worth
    fast = Request("x", [1, 2, 3, 4], SamplingParams(temperature=0.0))
    fast.output_token_ids = list(range(10))
    fast.num_accepted_tokens = 5  # 10 tokens in 5 steps
    assert DraftInput(fast, BLOCK, torch.Generator(), []).steps_saved_per_token == pytest.approx(0.5)
    calls = head.calls
    proposal = hybrid.propose([DraftInput(fast, BLOCK, torch.Generator(), [],
                                          economics=DraftEconomics(accepted_token_seconds=0.03))])
    assert proposal == {} and head.calls == calls  # 7.5 ms of worth: skipped for cost
    assert hybrid.head_skipped["cost"] == 1
    fast.num_accepted_tokens = 0  # a token a step: worth the whole 15 ms again
    assert DraftInput(fast, BLOCK, torch.Generator(), []).steps_saved_per_token == 1.0
    assert hybrid.propose([DraftInput(fast, BLOCK, torch.Generator(), [],
                                      economics=DraftEconomics(accepted_token_seconds=0.03))])["x"].source == "dspark"


def test_exploration_runs_the_head_for_one_request_per_explore_period_whatever_the_batch():
    """Exploring is counted in steps: with 32 streams skipped it still runs
    the head after EXPLORE_EVERY steps, not every other step, and for the
    request whose run folds the fewest features (an explored run for a
    request the head never ran for folds its whole context); each
    exploration that leaves the head skipped doubles the wait."""
    head = _StubHead()
    hybrid = HybridDrafter(head, NgramDrafter(1, 4))
    hybrid.head_rates = PositionRates(trials=[10.0], accepted=[1.0])  # first-draft acceptance 0.17
    head.block = DraftBlock([9] * BLOCK, [0.99] * BLOCK, None, "dspark")
    requests = [Request(f"f{i}", [1, 2, 3, 4 + i], SamplingParams(temperature=0.0)) for i in range(32)]
    head.backlogs = {r.request_id: 100 + abs(i - 20) for i, r in enumerate(requests)}  # f20 is cheapest
    busy = DraftEconomics(first_draft_threshold=0.5)
    explored_at = []
    for step in range(1, 7 * EXPLORE_EVERY + 1):
        hybrid.propose([DraftInput(r, BLOCK, torch.Generator(), [], economics=busy) for r in requests])
        hybrid.pending.clear()
        if hybrid.explored > len(explored_at):
            explored_at.append(step)
    assert explored_at == [EXPLORE_EVERY, 3 * EXPLORE_EVERY, 7 * EXPLORE_EVERY]  # waits of 64, 128, 256 steps
    assert head.calls == 3 and head.ran_for == ["f20"]
    assert hybrid.head_skipped == {"threshold": 32 * 7 * EXPLORE_EVERY - 3, "cost": 0}


def test_the_wait_between_explorations_doubles_to_its_cap_and_resets_when_the_head_pays():
    """Explorations that leave the head skipped double the wait up to
    EXPLORE_EVERY_MAX; one step where the head pays (runs unexplored)
    brings it back to EXPLORE_EVERY."""
    head = _StubHead()
    hybrid = HybridDrafter(head, NgramDrafter(1, 4))
    hybrid.head_rates = PositionRates(trials=[10.0], accepted=[1.0])  # first-draft acceptance 0.17
    head.block = DraftBlock([9] * BLOCK, [0.99] * BLOCK, None, "dspark")
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))  # no n-gram match

    def steps(count: int, threshold: float) -> None:
        for _ in range(count):
            hybrid.propose([DraftInput(free, BLOCK, torch.Generator(), [],
                                       economics=DraftEconomics(first_draft_threshold=threshold))])
            hybrid.pending.clear()

    steps(EXPLORE_EVERY * (2 * EXPLORE_EVERY_MAX // EXPLORE_EVERY), threshold=0.5)
    assert hybrid.stats()["explore_every"] == EXPLORE_EVERY_MAX
    steps(1, threshold=0.1)  # the head runs unexplored: it pays at this load
    assert hybrid.stats()["explore_every"] == EXPLORE_EVERY


def test_a_head_block_chosen_over_ngrams_is_credited_only_what_it_got_beyond_ngrams_expectation():
    """The payoff's gain: a head block chosen over an n-gram block earns its
    accepted drafts less the expected accepted drafts of the block it
    displaced; with no n-gram block on offer, all of them."""
    hybrid, head, _ = _load_case()
    hybrid.head_rates = PositionRates(trials=[10.0, 10.0], accepted=[9.0, 9.0])
    offered, calibrated = {}, hybrid._calibrated

    def spy(blocks, raw):  # the n-gram blocks on offer, as the choice saw them
        out = calibrated(blocks, raw)
        offered.update({rid: block for rid, block in out.items() if block.source == "ngram"})
        return out

    hybrid._calibrated = spy
    copying = Request("r", [5, 6, 7, 5, 6], SamplingParams(temperature=0.0))  # n-gram proposes 7 ...
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))  # no n-gram match
    proposals = hybrid.propose([DraftInput(r, BLOCK, torch.Generator(), []) for r in (copying, free)])
    assert proposals["r"].source == proposals["f"].source == "dspark"
    displaced = expected_accepted(offered["r"].confidences)
    assert "f" not in offered and displaced > 0 and hybrid.pending["r"].displaced == pytest.approx(displaced)
    assert hybrid.pending["f"].displaced == 0.0
    band = hybrid._bucket(displaced)
    assert band > 0 and hybrid.pending["r"].bucket == band and hybrid.pending["f"].bucket == 0
    gained = [payoff.gained for payoff in hybrid.payoffs]
    for request, accepted in ((copying, 3), (free, 2)):
        request.num_spec_steps += 1
        request.num_draft_tokens += 4
        request.num_accepted_tokens += accepted
        hybrid.absorb(request, None)
    # Each in the payoff of the band of the n-gram block it was chosen over.
    assert hybrid.payoffs[band].gained == pytest.approx(gained[band] + 3 - displaced)
    assert hybrid.payoffs[0].gained == pytest.approx(gained[0] + 2)


def test_the_head_runs_beside_weak_ngram_blocks_where_it_pays_there_and_not_beside_strong_ones():
    """The payoff is kept per band of n-gram's expectation: a head whose runs
    gained nothing beside a strong n-gram block, and a draft per run with no
    block on offer, runs for the free-text request only. One payoff for all
    (`payoff_edges=()`) averages the two and runs for neither."""
    hybrid, head, propose = _load_case()
    propose(accepted_token_seconds=1.0)  # both run: their bands are r's (strong n-gram) and 0 (none)
    (strong,) = [band for band, payoff in enumerate(hybrid.payoffs) if band > 0 and payoff.timed_runs]
    hybrid.payoffs[0] = HeadPayoff(runs=10.0, gained=10.0, verified=20.0, seconds=0.1, timed_runs=10.0)
    hybrid.payoffs[strong] = HeadPayoff(runs=10.0, gained=0.0, verified=0.0, seconds=0.1, timed_runs=10.0)
    assert propose(accepted_token_seconds=0.015) == {"r": "ngram", "f": "dspark"}  # 15 ms vs 10 ms a run
    assert head.ran_for == ["f"] and hybrid.head_skipped["cost"] == 1

    pooled, head, propose = _load_case(payoff_edges=())
    pooled.payoffs = [HeadPayoff(runs=20.0, gained=10.0, verified=20.0, seconds=0.2, timed_runs=20.0)]
    assert propose(accepted_token_seconds=0.015) == {"r": "ngram"}  # 7.5 ms vs 10 ms a run
    assert head.calls == 0 and pooled.head_skipped["cost"] == 2


class _HalvingCalibrator:
    """A per-source map that halves every confidence, so that mapped and raw
    confidences differ."""

    def calibrate(self, request_id, confidences):
        return [c / 2 for c in confidences]


def test_ngram_blocks_reach_the_policy_raw_and_head_blocks_as_the_hybrid_mapped_them():
    """The policy maps an n-gram block with its own calibrator, as it maps
    plain n-gram's (raw, unflagged); a head block comes mapped by the
    hybrid's head calibrator and flagged. The hybrid keeps its mapped
    figures for its own calibrators either way."""
    hybrid, head, _ = _load_case()
    hybrid.calibrators = {source: _HalvingCalibrator() for source in hybrid.calibrators}
    head.block = DraftBlock([9] * BLOCK, [0.1] * BLOCK, None, "dspark")  # n-gram's block wins where it has one
    copying = Request("r", [5, 6, 7, 5, 6], SamplingParams(temperature=0.0))  # n-gram proposes 7 ...
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))  # no n-gram match
    raw_ngram = hybrid.ngram.propose([DraftInput(copying, BLOCK, torch.Generator(), [])])["r"]
    proposals = hybrid.propose([DraftInput(r, BLOCK, torch.Generator(), []) for r in (copying, free)])
    ngram_block, head_block = proposals["r"], proposals["f"]
    assert (ngram_block.source, head_block.source) == ("ngram", "dspark")
    assert ngram_block.token_ids == raw_ngram.token_ids and not ngram_block.calibrated
    assert ngram_block.confidences == raw_ngram.confidences
    assert head_block.calibrated and head_block.confidences == [c / 2 for c in head.block.confidences]
    assert hybrid.pending["r"].calibrated == [c / 2 for c in raw_ngram.confidences]
    assert hybrid.pending["r"].raw == raw_ngram.confidences


def test_the_head_drafts_one_more_than_the_policy_verified_of_its_recent_blocks():
    """Drafts past what the policy verifies are sequential work thrown away:
    the head is asked for one more than the most verified of its last
    blocks (a history, read before it draws), and the full block at first."""
    hybrid, head, _ = _load_case()
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))  # no n-gram match: the head's block

    def step(verified: int, accepted: int) -> list[int]:
        proposal = hybrid.propose([DraftInput(free, BLOCK, torch.Generator(), [])])
        assert proposal["f"].source == "dspark"
        free.num_spec_steps += 1
        free.num_draft_tokens += verified
        free.num_accepted_tokens += accepted
        hybrid.absorb(free, None)  # the engine's absorb after the verification
        return head.asked

    assert step(verified=1, accepted=0) == [BLOCK]
    assert step(verified=2, accepted=1) == [2]
    assert step(verified=0, accepted=0) == [3] and len(hybrid.propose([DraftInput(free, BLOCK, torch.Generator(), [])])["f"]) == 3
    hybrid.head_lengths.recent.clear()
    for _ in range(hybrid.head_lengths.recent.maxlen):
        hybrid.head_lengths.observe(1)
    assert hybrid.propose([DraftInput(free, BLOCK, torch.Generator(), [])]) and head.asked == [2]


def test_ngram_drafts_past_the_heads_block_and_the_head_stays_within_it():
    """The hybrid takes --num-speculative-tokens (a copied run may go on for
    16); only the head is held to its block."""
    head = _StubHead()
    hybrid = HybridDrafter(head, NgramDrafter(1, 4))
    assert hybrid.max_draft_tokens is None
    head.block = DraftBlock([9] * BLOCK, [0.99] * BLOCK, None, "dspark")
    run = list(range(20, 40))
    copying = Request("c", run + [1] + run[:4], SamplingParams(temperature=0.0))  # a 4-token match, 16 to copy
    free = Request("f", [1, 2, 3, 4], SamplingParams(temperature=0.0))
    proposals = hybrid.propose([DraftInput(r, 16, torch.Generator(), []) for r in (copying, free)])
    assert proposals["c"].source == "ngram" and proposals["c"].token_ids == run[4:20]
    assert proposals["f"].source == "dspark" and head.asked == [BLOCK]


def test_the_hybrid_chooses_between_its_head_and_the_datastore_and_stays_lossless(tiny_dir, tiny_target, tmp_path):
    """The n-gram half with a datastore (prompt lookup kept to 4-token
    matches): datastore blocks compete with the head's, each source
    calibrated apart, and the output is plain decoding's."""
    from engine.spec.datastore import build_datastore, tokenizer_fingerprint

    plain_engine = make_engine(tiny_dir)
    prompts = [plain_engine.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = plain_engine.generate(prompts, params)
    fingerprint = tokenizer_fingerprint(plain_engine.tokenizer.backend.get_vocab())
    datastore = build_datastore(plain[:2] + [list(range(40, 70))] * 2, max_n=3, min_count=1, tokenizer=fingerprint)
    hybrid = HybridDrafter(make_drafter(plain_engine.loaded, "dspark"), NgramDrafter(4, 4, datastore=datastore))
    assert set(hybrid.calibrators) == {"ngram", "datastore", "dspark"}
    engine = make_engine(tiny_dir, plain_engine.loaded, hybrid)
    assert [engine.generate([p], params)[0] for p in prompts] == plain
    assert engine.generate(prompts * 2, params) == plain * 2
    assert hybrid.choices["datastore"] > 0 and hybrid.choices["dspark"] > 0
    assert engine.stats.spec_by_source["datastore"].num_accepted_tokens > 0
