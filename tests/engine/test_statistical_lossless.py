"""Sampling through the whole engine has exactly plain decoding's distribution.

Every drafter x every verification policy, on the 4-token model of
tests/engine/lossless_harness.py (which documents the statistics: 64 cells,
significance 1e-4, power >= 0.9 against a 3-point shift of any cell). Each
engine serves PER_SETTING requests of each of two settings (temperature 1;
top-k + top-p + min-p + all three penalties) interleaved, up to 128 at a
time, plus a few greedy and seeded requests that must reproduce plain
decoding token for token. Each test checks that speculation really happened
(drafts verified and accepted; for the adaptive policies, more than one
length chosen), so none passes vacuously.

The adaptive policies run under a cost curve that is flat up to KNEE query
tokens and steep after it (a draft past the knee costs 1/32 of a step, which
no draft's survival pays for with ~100 users in the step). The load-aware
policy prices drafts against ALL of the step's tokens, the prefill of the
requests admitted in the same step included (AdaptivePolicy). So requests
arrive as a steady stream of ARRIVALS_PER_STEP per step, at most
MAX_NUM_SEQS in the engine: a step then holds at most MAX_NUM_SEQS decoders
and admissions, each admission PROMPT_LEN tokens, and KNEE leaves DRAFT_ROOM
tokens above the fullest such step. With 80-128 requests in the step, only
the 16-30 most confident drafts of most steps are verified (the step's
other tokens: 240-256), so verification lengths follow the confidences.
Below the knee every draft pays and past it none does while 32 or more
users share the step, whatever the waiting users or the (wall-clock)
arrival rate add to them: what is verified does not depend on timing, and
the engines run without machine counters (lossless_harness.engine_config).
Refilling every free seat at once instead moves the short requests in waves
of up to 128 admissions (640 prefill tokens): such steps verify nothing,
and too few drafts are verified for the test's power.

Mutations (the last tests): the same harness must reject an engine whose
drafter reports c_k = q(x_k) (the bug this suite was written for), whose
recovered token comes from q instead of the residual, or whose bonus token
is drawn like a recovery.
"""
from __future__ import annotations

import pytest
import torch

from engine.engine import LLMEngine
from engine.spec import rejection
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.load import StepCostModel
from scheduler.policies import policy_spec
from scheduler.request import SamplingParams
from tests.engine.lossless_harness import (  # noqa: F401 (fixtures)
    DATASTORE_METHOD, OUTPUT_LEN, PLAIN, DrawnTokenConfidence, deterministic_streams, draft_models, engine_config, fit_by_setting, head_checkpoints,
    knee_cost, mixed_requests, serve, vocab_datastore, vocab_draft_dir, vocab_target, vocab_target_dir)

METHODS = ("ngram", "draft-model", "self-draft", *HEAD_METHODS)
POLICIES = ("static", "adaptive", "adaptive-async")
# The hybrid under the static policy only: its online calibration learns
# that a random head's drafts are rarely accepted, and the adaptive policies
# then verify too few drafts (139 in 7000 requests) for the test to have power.
SETTINGS = [(method, policy) for method in METHODS for policy in POLICIES] + [("hybrid", "static")] + [
    (DATASTORE_METHOD, "static"), (DATASTORE_METHOD, "adaptive")]
PER_SETTING = 3500
MAX_NUM_SEQS = 128
ARRIVALS_PER_STEP = 32
PROMPT_LEN = len(PLAIN.prompt)  # every prompt of this test has this length
DRAFT_ROOM = 16
# Fullest step: ARRIVALS_PER_STEP admissions of PROMPT_LEN tokens, the other
# seats decoding one token each.
KNEE = MAX_NUM_SEQS + (PROMPT_LEN - 1) * ARRIVALS_PER_STEP + DRAFT_ROOM
NUM_SPECULATIVE = 3  # a request has room for 2 drafts after its first token (OUTPUT_LEN 4)
# Requests that must equal plain decoding token for token, mixed into every run.
EXACT = [SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)] * 4 + [
    SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=OUTPUT_LEN, ignore_eos=True)
    for seed in (7, 8, 9, 10)]
# Long requests mixed in (unrecorded), as in real traffic: they keep drafting
# while the short recorded requests come and go, so the drafting backoff
# level they inherit follows real verification outcomes.
BACKGROUND = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def exact_outputs(vocab_target):
    """Plain decoding of the EXACT requests."""
    engine = make_engine(vocab_target, "none", "static", None)
    return engine.generate([list(PLAIN.prompt)] * len(EXACT), EXACT)


def make_engine(target, method: str, policy: str, draft_model: str | None, drafter=None) -> LLMEngine:
    config = engine_config(target, method, policy, draft_model, NUM_SPECULATIVE, MAX_NUM_SEQS)
    cost = knee_cost(KNEE) if policy_spec(policy).needs_step_cost else StepCostModel.flat()
    return LLMEngine(config, loaded=target, step_cost=cost, drafter=drafter)


def run_mixed(engine: LLMEngine, per_setting: int):
    """Serve the mixed batch; returns (fit per setting, the EXACT requests' outputs)."""
    prompts, params, names = mixed_requests(per_setting)
    extras = [(exact, "exact") for exact in EXACT] + [(BACKGROUND, "background")] * (len(prompts) // 64)
    step = len(prompts) // len(extras)
    for i, (extra, name) in enumerate(extras):  # spread through the run
        prompts.insert(i * (step + 1), list(PLAIN.prompt))
        params.insert(i * (step + 1), extra)
        names.insert(i * (step + 1), name)
    outputs = serve(engine, prompts, params, window=MAX_NUM_SEQS, arrivals_per_step=ARRIVALS_PER_STEP)
    exact_outputs = [out for out, name in zip(outputs, names) if name == "exact"]
    return fit_by_setting(engine.loaded, outputs, names), exact_outputs


def assert_speculation_happened(engine: LLMEngine, policy: str, num_requests: int) -> None:
    stats = engine.stats
    assert stats.num_draft_tokens >= num_requests // 2, f"only {stats.num_draft_tokens} drafts verified"
    assert stats.num_accepted_tokens >= num_requests // 4, \
        f"only {stats.num_accepted_tokens} of {stats.num_draft_tokens} drafts accepted"
    if policy != "static":
        counts = engine.verify_policy.stats().verify_length_counts
        chosen = [length for length, count in enumerate(counts) if count >= sum(counts) // 20]
        assert len(chosen) >= 2, f"verification lengths did not vary: {counts}"


@pytest.mark.parametrize("method, policy", SETTINGS)
def test_sampling_through_the_engine_is_lossless(vocab_target, draft_models, exact_outputs, deterministic_streams,
                                                 method, policy):
    engine = make_engine(vocab_target, method, policy, draft_models.get(method))
    fits, exact = run_mixed(engine, PER_SETTING)
    assert exact == exact_outputs, "greedy or seeded requests differ from plain decoding"
    assert_speculation_happened(engine, policy, 2 * PER_SETTING)
    if method == DATASTORE_METHOD:  # most blocks came from the datastore, accepted and rejected
        by_source = engine.stats.spec_by_source
        assert by_source["datastore"].num_drafts > by_source.get("ngram", by_source["datastore"]).num_drafts / 2
        assert 0 < by_source["datastore"].num_accepted_tokens < by_source["datastore"].num_draft_tokens
    for name, fit in fits.items():
        assert fit.power >= 0.9, f"{name}: too few samples for the power asked for ({fit})"
        assert not fit.rejects, f"{method} x {policy}, {name}: {fit}"


# --- mutations: the harness must catch each known way of breaking losslessness ------

def residual_is_the_draft(p_t, p_d):
    """MUTATION: recover from q instead of normalize(max(0, p - q))."""
    return torch.where(p_d.sum(-1, keepdim=True) > 0, p_d.float(), p_t)


def bonus_like_a_recovery(drafts, draft_probs, target_probs, layout, num_accepted, uniform, needs_draws):
    """MUTATION: the bonus gets no rule of its own: after all drafts were
    accepted, the final token is drawn from max(0, p_t - p_d) against the
    last draft row instead of from p_t."""
    p_t = target_probs[layout.first_row + num_accepted]
    p_d = rejection._draft_rows_at(drafts, draft_probs, layout.draft_start + num_accepted, p_t)
    return rejection._sample_inverse_cdf(rejection._residual(p_t, p_d), uniform)


def assert_rejected(fits) -> None:
    assert any(fit.rejects for fit in fits.values()), f"the mutation went unnoticed: {fits}"


def test_harness_rejects_a_confidence_of_the_drawn_token(vocab_target, draft_models, deterministic_streams):
    correct = make_engine(vocab_target, "draft-model", "adaptive", draft_models["draft-model"])
    engine = make_engine(vocab_target, "draft-model", "adaptive", draft_models["draft-model"],
                         drafter=DrawnTokenConfidence(correct.drafter))
    fits, _ = run_mixed(engine, PER_SETTING)
    assert_speculation_happened(engine, "adaptive", 2 * PER_SETTING)
    assert_rejected(fits)


@pytest.mark.parametrize("hook, mutation", [("_residual", residual_is_the_draft),
                                            ("_sample_final_tokens", bonus_like_a_recovery)],
                         ids=["residual-is-q", "bonus-like-a-recovery"])
def test_harness_rejects_a_wrong_acceptance_rule(vocab_target, draft_models, deterministic_streams, monkeypatch,
                                                 hook, mutation):
    monkeypatch.setattr(rejection, hook, mutation)
    engine = make_engine(vocab_target, "draft-model", "static", draft_models["draft-model"])
    fits, _ = run_mixed(engine, PER_SETTING)
    assert_rejected(fits)
