"""The engine's structured-output state: one RequestGrammar per constrained
request, the masks verification needs, and the draft cut.

The cut (before the scheduler sees a draft block): drafts from the first
one the grammar forbids onwards are dropped, so they take no verification
slot and no KV. Why this is exactly equivalent to verifying them: the
target's row at a forbidden x_j has p(x_j) = 0, so verification would
reject x_j and emit a sample of normalize(max(p - q_j, 0)). When q_j is
one-hot at x_j (n-gram drafts, greedy drafting) that residual is p itself,
which is what the row samples after the cut (it becomes the bonus row).
Greedy rows and the seeded Gumbel rule emit the target's masked token
whatever was drafted, so they are exact too. For a sampled draft from a
spread q_j the residual is NOT p: model drafters therefore build q with
the same mask (RowContext.allowed), never draw a forbidden token, and are
never cut, except after a drafted stop token where nothing more is emitted.
A sampled spread-q block cut anywhere else is a bug and fails loudly.
"""
from __future__ import annotations

import torch

from engine.structured.grammar import compiler_for
from engine.structured.matcher import GrammarError, RequestGrammar
from scheduler.drafts import DraftBlock
from scheduler.request import Request


class StructuredOutputs:
    """Per-request grammar state of one engine (requests without a
    response_format cost nothing here)."""

    def __init__(self, tokenizer, vocab_size: int, max_draft: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_rows = max_draft + 1
        self.grammars: dict[str, RequestGrammar] = {}
        self.num_cut_draft_tokens = 0  # drafts the grammar forbade, never verified

    def add(self, request: Request) -> None:
        """Compile (or find) the request's grammar and start its matcher."""
        spec = request.sampling_params.structured
        if spec is None:
            return
        compiler = compiler_for(self.tokenizer, self.vocab_size)
        self.grammars[request.request_id] = RequestGrammar(
            compiler.compile(spec), self._stop_tokens(request), self.vocab_size, self.max_rows,
            compiler.control_tokens)

    def _stop_tokens(self, request: Request) -> list[int]:
        """Where the grammar may end: the tokens that stop this request."""
        stops = set(self.tokenizer.stop_token_ids) | set(request.sampling_params.stop_token_ids)
        if request.eos_token_id is not None:
            stops.add(request.eos_token_id)
        return sorted(stops)

    def get(self, request: Request) -> RequestGrammar | None:
        return self.grammars.get(request.request_id)

    def forget(self, request_id: str) -> None:
        self.grammars.pop(request_id, None)

    # -- verification ----------------------------------------------------------
    def verify_masks(self, request: Request, drafts: list[int]) -> torch.Tensor | None:
        """[len(drafts) + 1, V] bool masks of the request's verification rows, or None."""
        grammar = self.get(request)
        return None if grammar is None else grammar.verify_masks(request.output_token_ids, drafts)

    def commit(self, request: Request, emitted: list[int], num_accepted: int) -> None:
        grammar = self.get(request)
        if grammar is not None:
            grammar.commit(num_accepted, emitted[-1])

    # -- the draft cut -------------------------------------------------------------
    def cut_drafts(self, proposals: dict[str, DraftBlock], requests: dict[str, Request]) -> dict[str, DraftBlock]:
        """Each block truncated at its first draft the grammar forbids."""
        if not self.grammars:
            return proposals
        return {rid: self._cut(requests[rid], block) if rid in self.grammars and rid in requests else block
                for rid, block in proposals.items()}

    def _cut(self, request: Request, block: DraftBlock) -> DraftBlock:
        keep, after_stop = self.grammars[request.request_id].allowed_prefix(
            request.output_token_ids, block.token_ids)
        if keep == len(block):
            return block
        if not after_stop and not _cut_is_exact(request, block):
            raise GrammarError(f"{block.source or 'the drafter'} drew token {block.token_ids[keep]} the "
                               "grammar forbids from a distribution that was not masked: cutting it "
                               "would bias sampling")
        self.num_cut_draft_tokens += len(block) - keep
        return block.prefix(keep)


def _cut_is_exact(request: Request, block: DraftBlock) -> bool:
    """Whether dropping a forbidden draft equals verifying it (module doc)."""
    params = request.sampling_params
    return block.probs is None or params.greedy or params.seed is not None
