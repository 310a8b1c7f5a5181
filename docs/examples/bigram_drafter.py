"""A drafter that follows the request's own bigrams: after token t it
proposes whatever followed t the last time t appeared in this request.

Adding it to specserve: save this file as engine/spec/bigram.py and add
`bigram` to the import line of engine/spec/builtin.py. Then
`specserve serve --speculative-method bigram` uses it.
"""
from __future__ import annotations

from engine.spec.base import DraftInput, Drafter
from engine.spec.registry import DrafterContext, register_drafter
from scheduler.drafts import DraftBlock


class BigramDrafter(Drafter):
    """Chains `last follower of t` from the request's latest token. Drafts
    are deterministic (probs None) and the confidences depend only on the
    position, never on a drawn token, as the confidence rule asks."""

    name = "bigram"
    costs_compute = False  # a dict lookup: drafting what is not verified costs nothing

    def __init__(self):
        self.followers: dict[str, dict[int, int]] = {}  # request id -> {token: next token}
        self.seen: dict[str, int] = {}  # request id -> tokens absorbed so far

    def absorb(self, request, hidden=None) -> None:
        rid = request.request_id
        start = max(self.seen.get(rid, 0) - 1, 0)  # re-read the last token: it gains a follower
        tokens = request.token_ids(start)
        table = self.followers.setdefault(rid, {})
        table.update(zip(tokens, tokens[1:]))
        self.seen[rid] = request.num_tokens

    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        proposals = {}
        for item in inputs:
            self.absorb(item.request)  # tokens emitted since the last absorb
            drafts = self._chain(item.request, item.max_tokens)
            if drafts:
                confidences = [0.5 * 0.8 ** k for k in range(len(drafts))]
                proposals[item.request.request_id] = DraftBlock(drafts, confidences, None, self.name)
        return proposals

    def _chain(self, request, length: int) -> list[int]:
        table, token, drafts = self.followers[request.request_id], request.last_token_id, []
        while len(drafts) < length and token in table:
            token = table[token]
            drafts.append(token)
        return drafts

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.followers.pop(rid, None)
            self.seen.pop(rid, None)


@register_drafter("bigram", help="the request's own last follower of each token (no weights)")
def build_bigram(context: DrafterContext) -> Drafter:
    return BigramDrafter()
