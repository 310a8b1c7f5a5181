"""The confidence rule (engine/spec/base.py, speculation.md §4), for every drafter.

A draft's confidence c_k may depend on the request's context, on the drafts
before position k and on the distribution draft k is drawn from, never on
the drawn token x_k itself. The test draws many proposals for one request
context with different random generators (temperature 1, so x_k varies),
groups them by the drafted prefix x_<k, and requires c_k to be the same
within every group: whatever x_k came out, its confidence was fixed before
it was drawn. Each check must see some group in which x_k took several
values, so it cannot pass vacuously; and it must flag the bug this rule
replaced (c_k = q(x_k)).
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from engine.spec.base import DraftInput
from engine.spec.factory import build_drafter
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.request import Request, SamplingParams
from tests.engine.lossless_harness import (  # noqa: F401 (fixtures)
    FILTERED, HEAD_BLOCK, PLAIN, DrawnTokenConfidence, draft_models, engine_config, head_checkpoints,
    sequence_features, vocab_datastore, vocab_draft_dir, vocab_target, vocab_target_dir)

METHODS = ("ngram", "draft-model", "self-draft", *HEAD_METHODS, "hybrid")
SAMPLED = ("draft-model", "self-draft", *HEAD_METHODS, "hybrid")  # drafters whose drafts are random
TRIALS = 150
NUM_BLOCKS = 64


def make_drafter(target, method: str, draft_models: dict[str, str]):
    config = engine_config(target, method, "static", draft_models.get(method), HEAD_BLOCK, 8)
    return build_drafter(config, target, NUM_BLOCKS, torch.float32)


def request_after_prefill(prompt: tuple[int, ...], params: SamplingParams) -> Request:
    """A request whose prompt has KV and whose first output token was just
    sampled: the state in which the engine asks for drafts."""
    request = Request("r", list(prompt), params)
    request.append_output_token(3)
    request.num_computed_tokens = request.num_tokens - 1
    return request


def proposals(drafter, target, request: Request, trials: int = TRIALS):
    """(tokens, confidences) of `trials` fresh proposals for the same context,
    each drawn with its own generator."""
    hidden = None
    if drafter.aux_layers:
        hidden = sequence_features(target, request.all_token_ids[:-1], drafter.aux_layers)
    drawn = []
    for trial in range(trials):
        drafter.forget([request.request_id])
        drafter.absorb(request, hidden)
        generator = torch.Generator().manual_seed(trial)
        item = DraftInput(request, HEAD_BLOCK, generator, list(range(NUM_BLOCKS)))
        block = drafter.propose([item]).get(request.request_id)
        if block is not None:
            drawn.append((block.token_ids, block.confidences))
    return drawn


def confidence_violations(drawn) -> tuple[list[str], int]:
    """Groups (k, x_<k) whose c_k varied, and how many groups saw x_k vary."""
    confidences, tokens = defaultdict(set), defaultdict(set)
    for token_ids, values in drawn:
        for k, (token, confidence) in enumerate(zip(token_ids, values)):
            prefix = (k, tuple(token_ids[:k]))
            confidences[prefix].add(round(confidence, 6))
            tokens[prefix].add(token)
    violations = [f"position {k + 1} after {list(prefix)}: confidences {sorted(confidences[(k, prefix)])} "
                  f"for tokens {sorted(tokens[(k, prefix)])}"
                  for k, prefix in confidences if len(confidences[(k, prefix)]) > 1]
    varied = sum(1 for key in tokens if len(tokens[key]) > 1)
    return violations, varied


@pytest.mark.parametrize("setting", [PLAIN, FILTERED], ids=lambda s: s.name)
@pytest.mark.parametrize("method", METHODS)
def test_confidence_does_not_depend_on_the_drawn_token(vocab_target, draft_models, method, setting):
    drafter = make_drafter(vocab_target, method, draft_models)
    drawn = proposals(drafter, vocab_target, request_after_prefill(setting.prompt, setting.params))
    assert drawn, f"{method} proposed nothing"
    violations, varied = confidence_violations(drawn)
    assert not violations, f"{method}: c_k depends on x_k: {violations[:3]}"
    if method in SAMPLED:
        assert varied >= 2, f"{method}: drafts never varied, the check saw nothing"


def test_the_check_flags_a_confidence_of_the_drawn_token(vocab_target, draft_models):
    drafter = DrawnTokenConfidence(make_drafter(vocab_target, "draft-model", draft_models))
    drawn = proposals(drafter, vocab_target, request_after_prefill(PLAIN.prompt, PLAIN.params))
    violations, _ = confidence_violations(drawn)
    assert violations
