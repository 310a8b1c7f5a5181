"""Sampling with logit_bias and with a grammar mask stays lossless under
speculation: chi-square goodness of fit of the engine's outputs against the
exact distribution of plain constrained decoding (tests/engine/lossless_harness.py
documents the statistics).

The grammar test uses its own tiny model over the ChatML specials plus the
words `"`, `a`, `b`, and the schema {"type": "string", "pattern": "[ab]*"}:
the output is `"`, then a or b or the closing `"`, then a stop token. The
exact distribution's masks come from that hand-written rule (not from the
engine's grammar code), so a wrong mask is caught too. The n-gram prompt
holds `" "` followed by `a`, so n-gram drafts the grammar forbids (text after
the closing quote) are proposed and cut; the draft model samples from its
own masked q.
"""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from engine.engine import LLMEngine
from engine.models.loader import load_model
from engine.sampler import RowContext, target_probs
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams, StructuredOutput
from tests.engine.lossless_harness import (  # noqa: F401 (fixtures)
    OUTPUT_LEN, PLAIN, Setting, deterministic_streams, engine_config, exact_distribution, goodness_of_fit,
    cell_counts, serve, sequence_logits, vocab_draft_dir, vocab_target, vocab_target_dir)
from tests.tiny_model import make_tiny_vocab_model_dir

PER_SETTING = 4500
MAX_NUM_SEQS = 128
NUM_SPECULATIVE = 3
WORDS = ('"', "a", "b")
QUOTE, A, B = 3, 4, 5
V = 3 + len(WORDS)
SCHEMA = StructuredOutput("json_schema", json.dumps({"type": "string", "pattern": "[ab]*"}), strict=True)
# The bias flattens the distribution (fewer samples for the power asked for).
GRAMMAR = SamplingParams(temperature=1.0, max_tokens=OUTPUT_LEN, structured=SCHEMA,
                         logit_bias=((B, 1.0), (QUOTE, -1.0)))
GRAMMAR_SAMPLES = 6000
GRAMMAR_PROMPT = (QUOTE, A, QUOTE, QUOTE, A, B, QUOTE, QUOTE, A)
BIASED = Setting("logit-bias", PLAIN.prompt, SamplingParams(temperature=1.0, max_tokens=OUTPUT_LEN, ignore_eos=True,
                                                             logit_bias=((3, 0.3), (1, -0.6))))


def run(engine: LLMEngine, prompt, params, count: int) -> list[list[int]]:
    return serve(engine, [list(prompt)] * count, [params] * count, window=2 * MAX_NUM_SEQS)


def make_engine(target, method: str, draft_model: str | None) -> LLMEngine:
    config = engine_config(target, method, "static", draft_model, NUM_SPECULATIVE, MAX_NUM_SEQS)
    return LLMEngine(config, loaded=target, step_cost=StepCostModel.flat())


# --- logit_bias on the harness's model --------------------------------------------------

@pytest.mark.parametrize("method", ["draft-model", "ngram"])
def test_logit_bias_sampling_is_lossless(vocab_target, vocab_draft_dir, deterministic_streams, method):
    engine = make_engine(vocab_target, method, vocab_draft_dir if method == "draft-model" else None)
    outputs = run(engine, BIASED.prompt, BIASED.params, PER_SETTING)
    fit = goodness_of_fit(cell_counts(outputs), exact_distribution(vocab_target, BIASED))
    assert engine.stats.num_accepted_tokens > PER_SETTING // 4
    assert fit.power >= 0.9 and not fit.rejects, f"{method}: {fit}"


# --- a grammar mask on a model of its own -------------------------------------------------

@pytest.fixture(scope="module")
def quote_target_dir(tmp_path_factory):
    return make_tiny_vocab_model_dir(tmp_path_factory.mktemp("quote_target"), words=WORDS, seed=1,
                                     embedding_std=0.07)


@pytest.fixture(scope="module")
def quote_draft_dir(tmp_path_factory):
    return make_tiny_vocab_model_dir(tmp_path_factory.mktemp("quote_draft"), words=WORDS, seed=1,
                                     embedding_std=0.07, perturb=0.05)


@pytest.fixture(scope="module")
def quote_target(quote_target_dir):
    return load_model(quote_target_dir)


def allowed_after(prefix: tuple[int, ...], stops: list[int]) -> torch.Tensor:
    """The grammar by hand: an opening quote, a/b or the closing quote, then stop."""
    mask = torch.zeros(V, dtype=torch.bool)
    quotes = prefix.count(QUOTE)
    mask[[QUOTE] if quotes == 0 else [QUOTE, A, B] if quotes == 1 else stops] = True
    return mask


PAD = V  # the cell value of a position after the output stopped


def cell(tokens: list[int]) -> int:
    padded = (list(tokens) + [PAD] * OUTPUT_LEN)[1:OUTPUT_LEN]
    return sum(t * (V + 1) ** (len(padded) - 1 - i) for i, t in enumerate(padded))


def exact_grammar_distribution(loaded, stops: list[int]) -> torch.Tensor:
    """P(tokens 2..4, PAD after a stop) of plain constrained decoding."""
    prefixes = [p for n in range(OUTPUT_LEN) for p in itertools.product(range(V), repeat=n)
                if not set(p[:-1]) & set(stops)]
    last_logits = [logits[-1] for logits in sequence_logits(loaded, [list(GRAMMAR_PROMPT) + list(p) for p in prefixes])]
    rows = [RowContext(GRAMMAR, list(GRAMMAR_PROMPT), list(p), allowed_after(p, stops)) for p in prefixes]
    probs = dict(zip(prefixes, target_probs(torch.stack(last_logits), rows).double()))
    joint = torch.zeros((V + 1) ** (OUTPUT_LEN - 1), dtype=torch.float64)
    for prefix in prefixes:
        if prefix and prefix[-1] in stops:
            continue
        for token in range(V):
            sequence = prefix + (token,)
            if token in stops or len(sequence) == OUTPUT_LEN:
                joint[cell(list(sequence))] += _probability(probs, sequence)
    return joint


def _probability(probs, sequence: tuple[int, ...]) -> float:
    return float(torch.tensor([float(probs[sequence[:n]][t]) for n, t in enumerate(sequence)]).prod())


def grammar_counts(outputs: list[list[int]]) -> torch.Tensor:
    counts = torch.zeros((V + 1) ** (OUTPUT_LEN - 1), dtype=torch.float64)
    for tokens in outputs:
        counts[cell(tokens)] += 1
    return counts


@pytest.mark.parametrize("method", ["draft-model", "ngram"])
def test_grammar_sampling_is_lossless(quote_target, quote_draft_dir, deterministic_streams, method):
    engine = make_engine(quote_target, method, quote_draft_dir if method == "draft-model" else None)
    outputs = run(engine, GRAMMAR_PROMPT, GRAMMAR, GRAMMAR_SAMPLES)
    stops = sorted(engine.outputs.eos_ids)
    fit = goodness_of_fit(grammar_counts(outputs), exact_grammar_distribution(quote_target, stops))
    assert engine.stats.num_accepted_tokens > PER_SETTING // 4
    if method == "ngram":
        assert engine.stats.num_grammar_cut_draft_tokens > 0
    assert fit.power >= 0.9 and not fit.rejects, f"{method}: {fit}"


def test_harness_rejects_an_unmasked_draft_cut_and_sampled_from_p(quote_target, quote_draft_dir,
                                                                  deterministic_streams, monkeypatch):
    """MUTATION: the draft model's q is not masked, and a forbidden sampled
    draft is cut anyway (its row then samples from p instead of the residual
    max(p - q, 0)): the output distribution moves and the test sees it."""
    import engine.spec.draft_model
    import engine.structured.outputs

    monkeypatch.setattr(engine.spec.draft_model, "grammar_mask", lambda item: None)
    monkeypatch.setattr(engine.structured.outputs, "_cut_is_exact", lambda request, block: True)
    engine = make_engine(quote_target, "draft-model", quote_draft_dir)
    outputs = run(engine, GRAMMAR_PROMPT, GRAMMAR, GRAMMAR_SAMPLES)
    fit = goodness_of_fit(grammar_counts(outputs), exact_grammar_distribution(quote_target, sorted(engine.outputs.eos_ids)))
    assert engine.stats.num_grammar_cut_draft_tokens > 0
    assert fit.rejects, f"the mutation went unnoticed: {fit}"
