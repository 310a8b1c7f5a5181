"""Ablations for tools.engine_ab: a method name -> the configuration it runs
and what is changed in the built engine (a piece of the engine replaced
by an older or a disabled one), so a change is measured beside what it
replaced in one run."""
from __future__ import annotations

from dataclasses import replace

from engine.engine import LLMEngine
from engine.spec.head_payoff import HeadPayoff
from engine.spec.ngram import prior_for_every_follower_class
from engine.spec.ngram_prior import SURVIVAL_BY_MATCH_AND_POSITION
from tools.attention_tiles import power_of_two_partition, tiles_planned_by


def never_run_the_head(engine: LLMEngine) -> None:
    """`hybrid-nohead`: the hybrid with its head never run, so n-gram plus
    what the hybrid costs by itself (target features captured and kept,
    bookkeeping), a diagnostic against `ngram`."""
    engine.drafter._head_could_win = lambda item, offered: False


def bigram_rows_recomputed(engine: LLMEngine) -> None:
    """`hybrid-ds-markov-uncached`: the hybrid's DSpark head computing its
    Markov head's bigram row for every sequential draft, as before phase 28
    kept each previous token's row (engine/spec/heads/token_rows.py)."""
    rows = engine.drafter.head.head._markov_rows
    rows.lookup = lambda ids, compute: compute(ids.reshape(-1)).view(*ids.shape, -1)


def one_payoff_for_every_band(engine: LLMEngine) -> None:
    """`hybrid-ds-one-payoff`: the hybrid as it was before phase 24, with one
    head payoff over all steps instead of one per band of what n-gram's
    block on offer is expected to get, and an accepted draft valued at a
    whole step whatever its request's tokens per step."""
    engine.drafter.payoff_edges = ()
    engine.drafter.payoffs = [HeadPayoff()]
    engine.drafter.value_share_of_step = False


def never_verify(engine: LLMEngine) -> None:
    """`ngram-noverify`: n-gram drafts for every request and step, the policy
    verifies none of them, so what the speculative path costs by itself
    (lookups, confidences, the policy's walk) against `off`."""
    policy = engine.verify_policy
    policy.choose_lengths = lambda candidates, *args, **kwargs: {r.request_id: 0 for r in candidates}


# n-gram's confidence before the fitted prior: match_len / (match_len + 1),
# times 0.9 per position into the block, whatever the follower class.
DECAYING_NGRAM_PRIOR = prior_for_every_follower_class(
    tuple(tuple(n / (n + 1) * 0.9 ** j for j in range(16)) for n in range(1, 5)))


def decaying_ngram_prior(engine: LLMEngine) -> None:
    """`ngram-decay` / `hybrid-decay`: n-gram confidences from the old
    heuristic instead of the fitted prior (engine/spec/ngram_prior.py)."""
    drafter = engine.drafter
    ngram = getattr(drafter, "ngram", drafter)  # the hybrid's own n-gram, or the drafter itself
    ngram.survival_prior = DECAYING_NGRAM_PRIOR


def prior_pooled_over_followers(engine: LLMEngine) -> None:
    """`ngram-ds-pooled-prior`: n-gram's prior fitted on the same replies
    with its follower classes pooled (engine/spec/ngram_prior.py), so a
    repeated match reads the same rates however it went on before."""
    engine.drafter.survival_prior = prior_for_every_follower_class(SURVIVAL_BY_MATCH_AND_POSITION)


def calibrated_twice(engine: LLMEngine) -> None:
    """`hybrid-twice`: the hybrid's head blocks (before phase 15, all its
    blocks) handed to the policy unflagged, so the adaptive policy maps the
    per-source calibrated confidences again (as before the `calibrated` flag)."""
    drafter = engine.drafter
    flagged = drafter._calibrated
    drafter._calibrated = lambda blocks, raw: {rid: replace(block, calibrated=False)
                                               for rid, block in flagged(blocks, raw).items()}


def ngram_blocks_mapped_by_the_hybrid(engine: LLMEngine) -> None:
    """`hybrid-ds-own-map`: the hybrid as it was before phase 15, handing
    every chosen block to the policy as its own per-source calibrators
    mapped it, flagged, instead of an n-gram or datastore block raw for the
    policy's calibrator. Under load it verified 4-10% more drafts than
    n-gram + datastore on chat, level in time (bench/results/2026-12-03-load-lockstep,
    `-hybrid-map` runs, where this was `hybrid-ds` and today's hybrid was
    `hybrid-ds-policy-map`)."""
    engine.drafter._as_handed = lambda block, drafted: block


def power_of_two_tiles(engine: LLMEngine) -> None:
    """`off-pow2-tiles` / `ngram-ds-pow2-tiles`: the CPU attention's shared
    tiles planned as before `partition_by_chunks` (one per power-of-two
    bucket of key chunks) during this engine's steps only."""
    step = engine.step

    def step_with_power_of_two_tiles():
        with tiles_planned_by(power_of_two_partition):
            return step()
    engine.step = step_with_power_of_two_tiles


# method -> (the configuration it runs, what is changed in the built engine)
ABLATIONS = {"hybrid-nohead": ("hybrid", never_run_the_head), "hybrid-ds-nohead": ("hybrid-ds", never_run_the_head),
             "ngram-noverify": ("ngram", never_verify), "ngram-ds-noverify": ("ngram-ds", never_verify),
             "ngram-decay": ("ngram", decaying_ngram_prior), "hybrid-decay": ("hybrid", decaying_ngram_prior),
             "hybrid-twice": ("hybrid", calibrated_twice),
             "hybrid-ds-own-map": ("hybrid-ds", ngram_blocks_mapped_by_the_hybrid),
             "hybrid-ds-one-payoff": ("hybrid-ds", one_payoff_for_every_band),
             "hybrid-ds-markov-uncached": ("hybrid-ds", bigram_rows_recomputed),
             # a second engine of the same configuration: the A/A check of a comparison's floor
             "ngram-ds-again": ("ngram-ds", None),
             "ngram-ds-pooled-prior": ("ngram-ds", prior_pooled_over_followers),
             "off-pow2-tiles": ("off", power_of_two_tiles), "ngram-ds-pow2-tiles": ("ngram-ds", power_of_two_tiles)}
