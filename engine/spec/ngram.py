"""Prompt-lookup drafting: propose what followed the latest earlier match of
the request's own recent suffix (prompt and output). No weights; where
nothing matches, optionally a corpus datastore's continuation
(engine/spec/datastore.py)."""
from __future__ import annotations

from engine.spec.base import DraftInput, Drafter
from engine.spec.datastore import NgramDatastore, resolve_datastore, tokenizer_fingerprint
from engine.spec.ngram_prior import SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION
from engine.spec.registry import DrafterContext, register_drafter
from engine.spec.tree import can_branch
from scheduler.drafts import DraftBlock, DraftEconomics, expected_accepted


def find_ngram_continuation(tokens: list[int], min_n: int, max_n: int, k: int) -> tuple[list[int], int]:
    """Longest suffix (max_n down to min_n tokens) that occurred earlier; return
    up to k tokens that followed its most recent earlier occurrence, and the
    matched length (0 when nothing matched)."""
    total = len(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n:]
        start = _last_occurrence(tokens, suffix, end=total - n)
        if start >= 0:
            follow = tokens[start + n: start + n + k]
            if follow:
                return follow, n
    return [], 0


def _last_occurrence(tokens: list[int], pattern: list[int], end: int) -> int:
    """Start of the last occurrence of `pattern` that begins before `end`."""
    first = pattern[0]
    n = len(pattern)
    for start in range(end - 1, -1, -1):
        if tokens[start] == first and tokens[start:start + n] == pattern:
            return start
    return -1


# How the earlier occurrences of a matched suffix went on (`NgramIndex.followers`):
FOLLOWED_ONCE = 0  # it occurred once before
FOLLOWED_ALIKE = 1  # it occurred more than once, always followed by the same token
FOLLOWED_VARIOUSLY = 2  # its occurrences were followed by different tokens
FOLLOWER_CLASS_NAMES = ("once", "alike", "variously")  # by FOLLOWED_* value
FOLLOWER_CLASSES = len(FOLLOWER_CLASS_NAMES)


def prior_for_every_follower_class(table: tuple[tuple[float, ...], ...]) -> tuple:
    """A (match length, position) survival table read alike whatever the
    follower class: the shape `NgramDrafter`'s `survival_prior` takes."""
    return (table,) * FOLLOWER_CLASSES


class NgramIndex:
    """Latest start of every n-gram (min_n..max_n) of one token sequence,
    except the n-grams that end at the last token, updated as tokens arrive:
    O(max_n) per token instead of a scan of the history per step.
    Finds the same continuation as `find_ngram_continuation`. Also keeps,
    per n-gram, whether its occurrences were all followed by the same
    token: a suffix that went on differently each time is a poor guess."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        # per length, n-gram -> (its latest start, the token after its first
        # occurrence, occurrences followed so far, whether every one was
        # followed by that token)
        self.grams: dict[int, dict[tuple, tuple[int, int, int, bool]]] = {n: {} for n in range(min_n, max_n + 1)}

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            # The n-gram that ended at the previous token is no longer final:
            # `token` follows it.
            last = len(self.tokens) - 2
            for n in range(self.min_n, self.max_n + 1):
                start = last - n + 1
                if start >= 0:
                    grams, gram = self.grams[n], tuple(self.tokens[start:last + 1])
                    _, first, count, alike = grams.get(gram, (start, token, 0, True))
                    grams[gram] = (start, first, count + 1, alike and token == first)

    def followers(self, match_len: int) -> int:
        """FOLLOWED_ONCE, _ALIKE or _VARIOUSLY: how the earlier occurrences
        of the last `match_len` tokens went on (a suffix `continuation` matched)."""
        _, _, count, alike = self.grams[match_len][tuple(self.tokens[len(self.tokens) - match_len:])]
        if not alike:
            return FOLLOWED_VARIOUSLY
        return FOLLOWED_ONCE if count == 1 else FOLLOWED_ALIKE

    def continuation(self, k: int) -> tuple[list[int], int]:
        total = len(self.tokens)
        for n in range(min(self.max_n, total - 1), self.min_n - 1, -1):
            entry = self.grams[n].get(tuple(self.tokens[total - n:]))
            if entry is not None:
                start = entry[0]
                return self.tokens[start + n: start + n + k], n
        return [], 0


class NgramDrafter(Drafter):
    """Prompt lookup over each request's own tokens.

    Confidence of the draft at position j after an n-token match: the
    survival rate measured there, given the drafts before it survived
    (`survival_prior`: by how the matched suffix went on before, then
    match length, then position; fitted by tools.fit_ngram_confidence). A
    one-token match continues the target's text about one time in five,
    far less often when that token went on differently each time it
    occurred; a four-token match nine in ten; and a draft deep in a
    surviving block survives more often than the block's first: a copied
    run goes on. The load-aware scheduler
    recalibrates it from realised acceptance. Drafts are deterministic, so
    the confidence never depends on a drawn token.

    With a `datastore` that carries a fitted survival map, each step drafts
    from whichever of prompt lookup and the datastore promises more
    accepted drafts (expected_accepted over the fitted rates): a one-token
    match continues the text about one time in five, where a long corpus
    context may do far better. The datastore's block has source
    "datastore" (calibrated apart by the hybrid). The datastore is not
    consulted where prompt lookup's block already promises more than any
    datastore block could (`best_expected`). A datastore without a map
    drafts only where prompt lookup finds nothing, with its raw shares.
    Either way the block is a function of the request's tokens alone, so
    verification stays lossless.

    With `alternatives`, a greedy or seeded request's block also carries
    the other source's block as an alternative branch (where it starts
    with another token), cut to the length that pays at the current load:
    a step verifies both and keeps the longer accepted run
    (engine/spec/tree.py).
    """

    name = "ngram"
    datastore_source = "datastore"
    costs_compute = False

    def __init__(self, min_n: int = 1, max_n: int = 4,
                 survival_prior: tuple[tuple[tuple[float, ...], ...], ...] = SURVIVAL_BY_FOLLOWERS_MATCH_AND_POSITION,
                 datastore: NgramDatastore | None = None, alternatives: bool = False):
        if alternatives and datastore is None:
            raise ValueError("n-gram alternatives come from the datastore: name one (--ngram-datastore)")
        self.min_n, self.max_n = min_n, max_n
        self.alternatives = alternatives
        self.survival_prior = survival_prior
        self.datastore = datastore
        self.indexes: dict[str, NgramIndex] = {}

    @property
    def sources(self) -> tuple[str, ...]:
        """The block sources this drafter emits."""
        return (self.name, self.datastore_source) if self.datastore is not None else (self.name,)

    def confidences(self, match_len: int, num_drafts: int, followers: int) -> list[float]:
        """Prior conditional survivals of a block after a match of
        `match_len` tokens whose earlier occurrences went on as `followers`
        says (FOLLOWED_*; longer matches and later positions than the table
        holds read its last row and column)."""
        rows = self.survival_prior[followers]
        row = rows[min(match_len, len(rows)) - 1]
        return [row[min(j, len(row) - 1)] for j in range(num_drafts)]

    def absorb(self, request, hidden=None) -> None:
        index = self.indexes.get(request.request_id)
        if index is None:
            index = self.indexes[request.request_id] = NgramIndex(self.min_n, self.max_n)
        index.extend(request.token_ids(len(index.tokens)))

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.indexes.pop(rid, None)

    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        items = []
        for item in inputs:
            self.absorb(item.request)  # tokens emitted after the last absorb
            branching = self.alternatives and takes_alternatives(item)
            index = self.indexes[item.request.request_id]
            lookup = self._lookup_block(index, item.max_tokens)
            items.append((item, index, branching, lookup, self._lookup_settles(lookup, item.max_tokens)))
        # The datastore's chains of every request that needs one, looked up together.
        wanted = {item.request.request_id: (index, item.max_tokens)
                  for item, index, branching, _, settled in items if self._needs_corpus(settled, branching)}
        corpus = dict(zip(wanted, self._corpus_blocks(list(wanted.values()))))
        proposals = {}
        for item, _, branching, lookup, settled in items:
            rid = item.request.request_id
            block, other = self._settle(lookup, corpus[rid], settled) if rid in corpus else (lookup, None)
            if block is not None and other is not None and branching:
                block = with_alternative(block, other, item.economics, item.steps_saved_per_token)
            if block is not None:
                proposals[rid] = block
        return proposals

    def block_for(self, index: NgramIndex, k: int) -> DraftBlock | None:
        """Up to k drafts after the indexed tokens: prompt lookup's block or
        the datastore's, whichever promises more accepted drafts (class doc)."""
        return self.blocks_for(index, k)[0]

    def blocks_for(self, index: NgramIndex, k: int, other: bool = False
                   ) -> tuple[DraftBlock | None, DraftBlock | None]:
        """(the block `block_for` drafts, the other source's block). The
        other is looked up only when asked for (`other`) or needed for the
        choice; None where that source has nothing."""
        lookup = self._lookup_block(index, k)
        settled = self._lookup_settles(lookup, k)
        if not self._needs_corpus(settled, other):
            return lookup, None
        return self._settle(lookup, self._corpus_blocks([(index, k)])[0], settled)

    def _lookup_settles(self, lookup: DraftBlock | None, k: int) -> bool:
        """Whether lookup's block promises at least what any datastore block
        of k could (a bound that spares the datastore's lookups); True
        without a datastore."""
        datastore = self.datastore
        if datastore is None:
            return True
        return lookup is not None and (datastore.survival is None or
                                       expected_accepted(lookup.confidences) >= datastore.best_expected(k))

    def _needs_corpus(self, settled: bool, other: bool) -> bool:
        """Whether the datastore's block is wanted: asked for (`other`), or
        lookup's block has not settled the choice."""
        return self.datastore is not None and (other or not settled)

    def _settle(self, lookup: DraftBlock | None, corpus: DraftBlock | None, settled: bool
                ) -> tuple[DraftBlock | None, DraftBlock | None]:
        """(chosen, other) of lookup's and the datastore's blocks."""
        if settled or corpus is None or \
                (lookup is not None and expected_accepted(lookup.confidences) >= expected_accepted(corpus.confidences)):
            return lookup, corpus
        return corpus, lookup

    def _lookup_block(self, index: NgramIndex, k: int) -> DraftBlock | None:
        follow, match_len = index.continuation(k)
        if not follow:
            return None
        return DraftBlock(follow, self.confidences(match_len, len(follow), index.followers(match_len)), None,
                          self.name)

    def _corpus_blocks(self, wanted: list[tuple[NgramIndex, int]]) -> list[DraftBlock | None]:
        """The datastore's block (up to k drafts) after each index's tokens."""
        if not wanted:
            return []
        continuations = self.datastore.calibrated_continuations([index.tokens for index, _ in wanted],
                                                                [k for _, k in wanted])
        return [DraftBlock(tokens, rates, None, self.datastore_source) if tokens else None
                for tokens, rates in continuations]


def with_alternative(block: DraftBlock, other: DraftBlock, economics: DraftEconomics,
                     steps_saved_per_token: float = 1.0) -> DraftBlock:
    """`block` with `other` (the other source's block) as its alternative
    branch, where that starts with another token and pays (`paying_length`)."""
    if other.token_ids[0] == block.token_ids[0]:
        return block
    # The two first drafts differ, so the alternative's can survive only
    # where the block's does not.
    confidences = [min(other.confidences[0], 1.0 - block.confidences[0])] + other.confidences[1:]
    length = min(paying_length(confidences, economics, steps_saved_per_token), len(block))
    if not length:
        return block
    return DraftBlock(block.token_ids, block.confidences, None, block.source, block.calibrated,
                      alternatives=(tuple(other.token_ids[:length]),))


def takes_alternatives(item: DraftInput) -> bool:
    """Whether a request's drafts may branch (engine/spec/tree.py): greedy
    and seeded requests, whose every row emits a token fixed by what comes
    before it, so the branch with the longest accepted run is exact.
    Unseeded sampling would need recursive rejection; logprobs and grammars
    are kept for one branch."""
    params = item.request.sampling_params
    return can_branch(params) and item.grammar is None


def paying_length(confidences: list[float], economics: DraftEconomics, steps_saved_per_token: float = 1.0) -> int:
    """How many drafts of an alternative branch to verify: the length whose
    expected accepted drafts (its first token differs from the main block's,
    so they are all gain) are worth most over the rows it adds (one more
    for its own anchor); 0 when no length pays. An accepted draft is worth
    `steps_saved_per_token` of a step (DraftInput.steps_saved_per_token), as
    in the hybrid's payoff."""
    if not confidences or confidences[0] < economics.first_draft_threshold:
        return 0
    best, best_length, gain, survival = 0.0, 0, 0.0, 1.0
    for length, confidence in enumerate(confidences, start=1):
        survival *= confidence
        gain += survival
        if economics.accepted_token_seconds == float("inf"):
            worth = gain
        else:
            worth = (gain * economics.accepted_token_seconds * steps_saved_per_token
                     - (1 + length) * economics.verify_token_seconds)
        if worth > best:
            best, best_length = worth, length
    return best_length


def load_datastore(path: str | None, tokenizer) -> NgramDatastore | None:
    """The datastore `--ngram-datastore` names (None: none; `auto`: the
    bundled one of the target's tokenizer, if any), checked against the
    target's tokenizer: one built over another vocabulary raises ValueError."""
    return resolve_datastore(path, tokenizer_fingerprint(tokenizer.backend.get_vocab()))


@register_drafter("ngram", help="prompt lookup over the request's own tokens (no weights)")
def _build_ngram(context: DrafterContext) -> Drafter:
    spec = context.config.speculative
    return NgramDrafter(spec.ngram_min, spec.ngram_max,
                        datastore=load_datastore(spec.ngram_datastore, context.target.tokenizer),
                        alternatives=spec.ngram_alternatives)
