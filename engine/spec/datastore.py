"""A datastore of what most often follows short contexts in a text corpus,
for drafting where a request's own tokens offer little or nothing to copy.

Prompt lookup (engine/spec/ngram.py) drafts only when the request's recent
suffix occurred earlier in the request, and a short match is a poor
guess. This table proposes the corpus's most frequent continuation of the
longest context (up to `max_n` tokens) it holds, one token at a time:
retrieval in place of a draft model, as REST (He et al., 2023) drafts
from a datastore. It costs a lookup per draft, no forward.

Each entry keys a context (its length and tokens, hashed to 64 bits) to
the token that followed it most often in the corpus and that token's
share of the context's continuations: the draft's confidence, read as the
chance that it survives given that the drafts before it did
(speculation.md s.1). Only contexts seen at least `min_count` times are
kept. The file is a safetensors file with the tokenizer's fingerprint in
its metadata, so a datastore is never used with another vocabulary; a
path ending in .xz is read and written xz-packed (engine/packed_files.py).

A share over-states survival (the corpus is not the target). A datastore
may carry a fitted map from (position in the block, length of the held
context, share in tenths) to the survival rate measured on the target's
own outputs (tools.fit_datastore_confidence). Its drafts then carry those
rates, on the same scale as prompt lookup's fitted prior, so that n-gram
can draft from whichever of the two promises the longer accepted run.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Sequence

import numpy as np

from engine.config import DATASTORE_AUTO
from engine.packed_files import plain_file, plain_name, safetensors_metadata, write_maybe_packed
from scheduler.drafts import expected_accepted

log = logging.getLogger("specserve.datastore")

FORMAT = "specserve-ngram-datastore"
VERSION = "1"
SHARE_BINS = 10  # the fitted survival map reads a share in tenths
_MULTIPLIER = 1_000_003
_MASK = (1 << 64) - 1


def context_key(context: Sequence[int]) -> int:
    """64-bit key of a context: its length, then each token, folded by a
    polynomial hash (the same arithmetic as `_window_keys`, wrapping at 2**64)."""
    key = len(context)
    for token in context:
        key = (key * _MULTIPLIER + token + 1) & _MASK
    return key


def tokenizer_fingerprint(vocab: dict[str, int]) -> str:
    """A digest of a tokenizer's vocabulary (token text -> id)."""
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


@dataclass
class NgramDatastore:
    """Sorted context keys, the most frequent next token of each, its share."""

    keys: np.ndarray  # uint64, sorted, unique
    next_tokens: np.ndarray  # int32
    confidences: np.ndarray  # float16: the next token's share of the context's continuations
    max_n: int
    tokenizer: str  # tokenizer_fingerprint of the vocabulary the tokens belong to
    description: str = ""
    # float32 [positions, max_n, SHARE_BINS]: survival[j, n - 1, b] is the
    # rate at which a draft at position j, read after a held context of n
    # tokens with a share in tenth b, survived given that the drafts before
    # it did; None where none was fitted. Positions past the last read it.
    survival: np.ndarray | None = None
    survival_fit: str = ""  # what the map was fitted on

    def __len__(self) -> int:
        return int(self.keys.size)

    def lookup(self, context: Sequence[int]) -> tuple[int, float] | None:
        """The next token and its share for the longest suffix of `context`
        (at most max_n tokens) the datastore holds; None if none."""
        hit = self._longest_hit(context)
        return None if hit is None else hit[:2]

    def _longest_hit(self, context: Sequence[int]) -> tuple[int, float, int] | None:
        """(next token, share, context length) of the longest held suffix."""
        return self._longest_hits([list(context[-self.max_n:])])[0]

    def _longest_hits(self, windows: list[list[int]]) -> list[tuple[int, float, int] | None]:
        """`_longest_hit` of each window (at most max_n tokens each), all
        windows' suffixes looked up in ONE search: at 32 streams a step
        drafts a few hundred chained lookups, and numpy's per-call overhead,
        not the search, is what a lookup cost one at a time."""
        queries = [context_key(window[len(window) - n:]) for window in windows for n in range(len(window), 0, -1)]
        if not queries or not self.keys.size:
            return [None] * len(windows)
        wanted = np.array(queries, dtype=np.uint64)
        at = np.minimum(np.searchsorted(self.keys, wanted), self.keys.size - 1)
        found, at = (self.keys[at] == wanted).tolist(), at.tolist()
        hits, start = [], 0
        for window in windows:  # each window's queries run from its longest suffix down
            end = start + len(window)
            first = next((i for i in range(start, end) if found[i]), None)
            hits.append(None if first is None else
                        (int(self.next_tokens[at[first]]), float(self.confidences[at[first]]), end - first))
            start = end
        return hits

    def chain(self, context: Sequence[int], k: int) -> list[tuple[int, float, int]]:
        """Up to k drafts as (token, share, context length), each the
        datastore's next token after the context and the drafts before it;
        stops where no suffix is held."""
        return self.chains([context], [k])[0]

    def chains(self, contexts: list[Sequence[int]], ks: list[int]) -> list[list[tuple[int, float, int]]]:
        """`chain` of each context with its own k, the contexts' lookups at
        each position of the chain made together (`_longest_hits`)."""
        windows = [list(context[-self.max_n:]) for context in contexts]
        drafts: list[list[tuple[int, float, int]]] = [[] for _ in contexts]
        active = [i for i, k in enumerate(ks) if k > 0]
        while active:
            going_on = []
            for i, hit in zip(active, self._longest_hits([windows[i] for i in active])):
                if hit is None:
                    continue
                drafts[i].append(hit)
                windows[i] = (windows[i] + [hit[0]])[-self.max_n:]
                if len(drafts[i]) < ks[i]:
                    going_on.append(i)
            active = going_on
        return drafts

    def continuation(self, context: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """Up to k drafts (`chain`) and their shares."""
        drafts = self.chain(context, k)
        return [token for token, _, _ in drafts], [share for _, share, _ in drafts]

    def calibrated_continuation(self, context: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """Up to k drafts and their fitted survival rates (`rate`); their
        shares where no map was fitted."""
        return self.calibrated_continuations([context], [k])[0]

    def calibrated_continuations(self, contexts: list[Sequence[int]], ks: list[int]
                                 ) -> list[tuple[list[int], list[float]]]:
        """`calibrated_continuation` of each context, looked up together (`chains`)."""
        return [([token for token, _, _ in drafts],
                 [self.rate(j, length, share) for j, (_, share, length) in enumerate(drafts)])
                for drafts in self.chains(contexts, ks)]

    def rate(self, position: int, length: int, share: float) -> float:
        """The fitted survival rate of a draft; its share without a map."""
        if self.survival is None:
            return float(share)
        return float(self.survival[min(position, self.survival.shape[0] - 1), length - 1, share_bin(share)])

    def best_expected(self, k: int) -> float:
        """An upper bound on the expected accepted drafts of any block of k
        this datastore can draft (every position at its best fitted rate);
        infinite without a map."""
        if self.survival is None:
            return float("inf")
        best = self.survival.max(axis=(1, 2))
        return expected_accepted([float(best[min(j, len(best) - 1)]) for j in range(k)])

    # ---- files ----
    def save(self, path: str) -> None:
        from safetensors.numpy import save_file

        arrays = {"keys": self.keys, "next_tokens": self.next_tokens, "confidences": self.confidences}
        if self.survival is not None:
            arrays["survival"] = np.ascontiguousarray(self.survival, dtype=np.float32)
        metadata = {"format": FORMAT, "version": VERSION, "max_n": str(self.max_n), "tokenizer": self.tokenizer,
                    "description": self.description, "survival_fit": self.survival_fit}
        write_maybe_packed(path, lambda plain: save_file(arrays, plain, metadata=metadata))

    @classmethod
    def load(cls, path: str, tokenizer: str | None = None) -> "NgramDatastore":
        """Read a datastore; ValueError if it is not one, or was built for
        another tokenizer than `tokenizer` (a fingerprint) when given."""
        from safetensors import safe_open

        with plain_file(path) as plain, safe_open(plain, framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"{path} is not a {FORMAT} v{VERSION} file (metadata {meta})")
            if tokenizer is not None and meta.get("tokenizer") != tokenizer:
                raise ValueError(f"{path} was built for tokenizer {meta.get('tokenizer')}, "
                                 f"the model's is {tokenizer}")
            arrays = {name: f.get_tensor(name) for name in f.keys()}
        survival, max_n = arrays.get("survival"), int(meta["max_n"])
        if survival is not None and (survival.ndim != 3 or survival.shape[1:] != (max_n, SHARE_BINS)):
            raise ValueError(f"{path}: survival map of shape {survival.shape}, "
                             f"expected [positions, {max_n}, {SHARE_BINS}]")
        return cls(arrays["keys"], arrays["next_tokens"], arrays["confidences"], max_n,
                   meta["tokenizer"], meta.get("description", ""), survival, meta.get("survival_fit", ""))


def bundled_datastore(tokenizer: str) -> str | None:
    """The path of the datastore shipped in engine/spec/datastores that was
    built over the tokenizer with this fingerprint; None if none was."""
    for entry in sorted(resources.files("engine.spec.datastores").iterdir(), key=lambda e: e.name):
        if (plain_name(entry.name).endswith(".safetensors")
                and safetensors_metadata(str(entry)).get("tokenizer") == tokenizer):
            return str(entry)
    return None


def resolve_datastore(path: str | None, tokenizer: str) -> NgramDatastore | None:
    """The datastore `--ngram-datastore` names: None for none, `auto` for the
    bundled one of this tokenizer (none if it has none, and the log says
    so), else the file, which must have been built over this tokenizer."""
    if not path:
        return None
    if path == DATASTORE_AUTO:
        path = bundled_datastore(tokenizer)
        if path is None:
            log.info("no bundled n-gram datastore for tokenizer %s: prompt lookup only", tokenizer)
            return None
    datastore = NgramDatastore.load(path, tokenizer)
    log.info("n-gram datastore %s: %d contexts (%s)", path, len(datastore), datastore.description)
    if datastore.survival is None:
        log.warning("n-gram datastore %s has no fitted survival map (tools.fit_datastore_confidence): "
                    "it drafts only where prompt lookup finds nothing, with its raw shares", path)
    return datastore


def share_bin(share: float) -> int:
    """The tenth of [0, 1] a share falls in (1.0 in the last)."""
    return min(SHARE_BINS - 1, max(0, int(share * SHARE_BINS)))


def build_datastore(sequences: Iterable[Sequence[int]], max_n: int, min_count: int, tokenizer: str,
                    description: str = "") -> NgramDatastore:
    """Count, for every context of 1..max_n tokens inside one sequence, which
    token followed it; keep the contexts seen at least `min_count` times
    with their most frequent follower (ties: the lowest id)."""
    if max_n < 1 or min_count < 1:
        raise ValueError("need max_n >= 1 and min_count >= 1")
    tokens = _joined(sequences)
    tables = [_count_contexts(tokens, n, min_count) for n in range(1, max_n + 1)]
    keys = np.concatenate([t[0] for t in tables])
    order = np.argsort(keys, kind="stable")
    keys, first = np.unique(keys[order], return_index=True)  # a 64-bit collision keeps one entry
    chosen = order[first]
    next_tokens = np.concatenate([t[1] for t in tables])[chosen].astype(np.int32)
    confidences = np.concatenate([t[2] for t in tables])[chosen].astype(np.float16)
    return NgramDatastore(keys, next_tokens, confidences, max_n, tokenizer, description)


def _joined(sequences: Iterable[Sequence[int]]) -> np.ndarray:
    """The sequences end to end, -1 between them (no context spans two)."""
    parts = [np.asarray(list(s) + [-1], dtype=np.int64) for s in sequences]
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if (joined[joined != -1] < 0).any():
        raise ValueError("token ids must be non-negative")
    return joined


def _window_keys(tokens: np.ndarray, n: int) -> np.ndarray:
    """keys[i] = context_key(tokens[i-n:i]) for i >= n (garbage below n)."""
    keys = np.full(tokens.size, n, dtype=np.uint64)
    shifted = (tokens + 1).astype(np.uint64)
    for m in range(n):  # token i-n+m enters the fold
        lagged = np.zeros(tokens.size, dtype=np.uint64)
        lagged[n - m:] = shifted[: tokens.size - (n - m)]
        keys = keys * np.uint64(_MULTIPLIER) + lagged
    return keys


def _count_contexts(tokens: np.ndarray, n: int, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys of the n-token contexts seen >= min_count times, their most
    frequent next token, and its share."""
    separators = np.concatenate([[0], np.cumsum(tokens < 0)])
    positions = np.arange(n, tokens.size)
    # the context tokens[i-n:i] and the next token tokens[i] hold no separator
    clean = separators[positions + 1] - separators[positions - n] == 0
    positions = positions[clean]
    if not positions.size:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    keys, nexts = _window_keys(tokens, n)[positions], tokens[positions]
    order = np.lexsort((nexts, keys))
    keys, nexts = keys[order], nexts[order]
    pair_start = np.flatnonzero(np.concatenate([[True], (keys[1:] != keys[:-1]) | (nexts[1:] != nexts[:-1])]))
    pair_keys, pair_nexts = keys[pair_start], nexts[pair_start]
    pair_counts = np.diff(np.append(pair_start, keys.size))
    context_start = np.flatnonzero(np.concatenate([[True], pair_keys[1:] != pair_keys[:-1]]))
    totals = np.add.reduceat(pair_counts, context_start)
    group = np.repeat(np.arange(context_start.size), np.diff(np.append(context_start, pair_keys.size)))
    by_count = np.lexsort((pair_nexts, -pair_counts, group))  # per context: most counted, then lowest id
    best = by_count[np.concatenate([[True], group[by_count][1:] != group[by_count][:-1]])]
    keep = totals >= min_count
    return pair_keys[best][keep], pair_nexts[best][keep], (pair_counts[best] / totals)[keep]
