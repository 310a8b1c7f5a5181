"""Target states for training, computed once and cached on disk in shards
that are read lazily (a few million tokens do not fit in memory).

One teacher-forced pass of the target (engine/spec/training/prefill.py)
over every sequence gives, per token, the outputs of the heads'
`aux_layers` (their input) and the target's top-k next-token
log-probabilities (the soft labels; the full 49k-vocabulary distribution
is never stored or recomputed in training).

On disk: safetensors shards plus `features.json`, which holds the
fingerprint of what was computed (target, dtype, layers, k, sequences)
and each shard's sequence ids, lengths and trained-token counts. Per
token a shard stores aux (float16, A*H values), tokens (int32), top-k ids
(int32) and log-probs (float32), and whether the token is trained on (an
assistant token); per sequence, whether its labels come from the target's
argmax (`relabel`: text the target did not write). About 3.6 KB per token
for SmolLM2's three aux layers.

A rerun with the same fingerprint reuses the cache; an interrupted run
resumes after the last complete shard; a complete cache of the first N
sequences grows when more follow them (`--conversations` raised: only the
new ones are computed); a cache holding a superset of the layers serves a
head that needs fewer.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.spec.training.generate import Sample, _progress
from engine.spec.training.prefill import batch_free_kernels, teacher_forced_states

INDEX = "features.json"
FORMAT = 2
DEFAULT_TOP_K = 20
MAX_BATCH_SEQUENCES = 64


@dataclass
class SequenceFeatures:
    """One cached sequence (CPU tensors): tokens [T] long, aux [T, A*H]
    float16, topk_ids [T, k] long and topk_logprobs [T, k] float32 (row i:
    the target's distribution of token i+1), trainable [T] bool (token i
    is trained on as a prediction), relabel (labels = the target's argmax)."""

    id: str
    tokens: torch.Tensor
    aux: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    trainable: torch.Tensor
    relabel: bool

    @property
    def first_trainable(self) -> int:
        """Index of the first trained token (the end of the first prompt)."""
        return _first_trained(self.trainable)


def _first_trained(trainable: torch.Tensor) -> int:
    """Index of the first True in trainable [T] bool; T if none."""
    hits = trainable.nonzero()
    return int(hits[0]) if hits.numel() else trainable.shape[0]


@dataclass(frozen=True)
class _SequenceRef:
    shard: str  # path of the shard file
    row: int
    start: int
    end: int
    id: str
    num_trainable: int


class FeatureSet:
    """A lazy view over cached sequences (of one or several feature
    directories); `sequence(i)` reads one from disk."""

    def __init__(self, aux_layers: tuple[int, ...], hidden_size: int, refs: list[_SequenceRef],
                 columns: torch.Tensor | None = None):
        self.aux_layers, self.hidden_size = tuple(aux_layers), hidden_size
        self.refs, self.columns = refs, columns
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.refs]

    @property
    def num_tokens(self) -> int:
        return sum(r.end - r.start for r in self.refs)

    @property
    def num_trainable_tokens(self) -> int:
        return sum(r.num_trainable for r in self.refs)

    def sequence(self, index: int) -> SequenceFeatures:
        ref = self.refs[index]
        handle = self._handle(ref.shard)
        rows = slice(ref.start, ref.end)
        aux = handle.get_slice("aux")[rows]
        if self.columns is not None:
            aux = aux[:, self.columns]
        return SequenceFeatures(
            ref.id, handle.get_slice("tokens")[rows].long(), aux, handle.get_slice("topk_ids")[rows].long(),
            handle.get_slice("topk_logprobs")[rows], handle.get_slice("trainable")[rows].bool(),
            bool(handle.get_slice("relabel")[ref.row: ref.row + 1][0]))

    def tokens(self, index: int) -> tuple[torch.Tensor, int]:
        """Sequence `index`'s tokens [T] long and its first trained token's
        index (`SequenceFeatures.first_trainable`), without reading its features."""
        ref = self.refs[index]
        handle = self._handle(ref.shard)
        rows = slice(ref.start, ref.end)
        return handle.get_slice("tokens")[rows].long(), _first_trained(handle.get_slice("trainable")[rows].bool())

    def _handle(self, shard: str):
        if shard not in self._handles:
            self._handles[shard] = safe_open(shard, framework="pt")
        return self._handles[shard]

    def subset(self, indices: list[int]) -> "FeatureSet":
        return FeatureSet(self.aux_layers, self.hidden_size, [self.refs[i] for i in indices], self.columns)

    @staticmethod
    def concat(sets: list["FeatureSet"]) -> "FeatureSet":
        """The sequences of several sets (same layers), in order."""
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ValueError("no sequences to concatenate")
        first = sets[0]
        if any(s.aux_layers != first.aux_layers or s.columns is not None for s in sets):
            raise ValueError("concatenated feature sets need the same aux layers, unselected")
        return FeatureSet(first.aux_layers, first.hidden_size, [r for s in sets for r in s.refs])

    def split_by(self, predicate) -> tuple["FeatureSet", "FeatureSet"]:
        """(sequences whose id satisfies predicate, the others)."""
        yes = [i for i, ref in enumerate(self.refs) if predicate(ref.id)]
        no = [i for i, ref in enumerate(self.refs) if not predicate(ref.id)]
        return self.subset(yes), self.subset(no)

    def select_layers(self, aux_layers: tuple[int, ...]) -> "FeatureSet":
        """The same sequences with only `aux_layers` (in that order) in aux."""
        aux_layers = tuple(aux_layers)
        if aux_layers == self.aux_layers:
            return self
        missing = set(aux_layers) - set(self.aux_layers)
        if missing:
            raise ValueError(f"cached features lack layers {sorted(missing)} (have {self.aux_layers})")
        h = self.hidden_size
        columns = torch.cat([torch.arange(self.aux_layers.index(i) * h, (self.aux_layers.index(i) + 1) * h)
                             for i in aux_layers])
        if self.columns is not None:
            columns = self.columns[columns]
        return FeatureSet(aux_layers, h, self.refs, columns)


# ---------------------------------------------------------------- computing

def fingerprint(loaded, aux_layers, samples: list[Sample], max_len: int, top_k: int) -> str:
    dtype = next(loaded.model.parameters()).dtype
    digest = hashlib.sha1(f"{FORMAT}|{loaded.path}|{dtype}|{list(aux_layers)}|{max_len}|{top_k}".encode())
    for s in samples:
        digest.update(f"{s.id}:{s.kind}:{s.spans(max_len)}:{s.tokens[:max_len]}".encode())
    return digest.hexdigest()


def collect_features(loaded, samples: list[Sample], aux_layers, out_dir: str, max_len: int = 1024,
                     batch_tokens: int = 2048, shard_tokens: int = 65536, top_k: int = DEFAULT_TOP_K,
                     progress: bool = True) -> FeatureSet:
    """Compute (or find in `out_dir`) the features of `samples`."""
    aux_layers = tuple(aux_layers)
    key = fingerprint(loaded, aux_layers, samples, max_len, top_k)
    index = _read_index(out_dir)
    if index and index.get("complete") and index["fingerprint"] == key:
        return load_features(out_dir)
    if index and index.get("complete") and _holds_a_prefix(index, loaded, aux_layers, samples, max_len, top_k):
        index.update(fingerprint=key, complete=False)  # keep the cached sequences, compute those after them
        _write_index(out_dir, index)
    if not index or index["fingerprint"] != key:
        index = {"fingerprint": key, "format": FORMAT, "aux_layers": list(aux_layers),
                 "hidden_size": loaded.config.hidden_size, "top_k": top_k, "shards": [],
                 "num_sequences": 0, "complete": False}
        _write_index(out_dir, index)
    _compute_remaining(loaded, samples, out_dir, index, max_len, batch_tokens, shard_tokens, progress)
    return load_features(out_dir)


def _holds_a_prefix(index: dict, loaded, aux_layers, samples: list[Sample], max_len: int, top_k: int) -> bool:
    """Whether the cache is exactly the features of samples[:n], n its size."""
    cached = index["num_sequences"]
    return 0 < cached < len(samples) and \
        index["fingerprint"] == fingerprint(loaded, aux_layers, samples[:cached], max_len, top_k)


def _compute_remaining(loaded, samples, out_dir, index, max_len, batch_tokens, shard_tokens, progress):
    todo = samples[index["num_sequences"]:]
    bar = _progress(len(todo), "features", progress)
    aux_layers, top_k = tuple(index["aux_layers"]), index["top_k"]
    shard: list[tuple[Sample, list[int], object]] = []
    with batch_free_kernels(loaded.model) as model:
        for batch in _batches(todo, max_len, batch_tokens):
            sequences = [s.tokens[:max_len] for s in batch]
            states = teacher_forced_states(model, sequences, aux_layers, top_k)
            shard.extend(zip(batch, sequences, states))
            bar.update(len(batch), sum(len(s) for s in sequences))
            if sum(len(seq) for _, seq, _ in shard) >= shard_tokens:
                _write_shard(out_dir, index, shard, max_len)
                shard = []
    if shard:
        _write_shard(out_dir, index, shard, max_len)
    index["complete"] = True
    _write_index(out_dir, index)
    bar.close()


def _batches(samples: list[Sample], max_len: int, batch_tokens: int):
    batch, used = [], 0
    for sample in samples:
        n = min(len(sample.tokens), max_len)
        if batch and (used + n > batch_tokens or len(batch) == MAX_BATCH_SEQUENCES):
            yield batch
            batch, used = [], 0
        batch.append(sample)
        used += n
    if batch:
        yield batch


def _trainable_mask(sample: Sample, length: int, max_len: int) -> torch.Tensor:
    mask = torch.zeros(length, dtype=torch.uint8)
    for start, end in sample.spans(max_len):
        mask[start:end] = 1
    mask[0] = 0  # the first token has no context to be predicted from
    return mask


def _write_shard(out_dir: str, index: dict, shard, max_len: int) -> None:
    lengths = [len(seq) for _, seq, _ in shard]
    masks = [_trainable_mask(s, n, max_len) for (s, _, _), n in zip(shard, lengths)]
    aux = torch.cat([st.aux.float().cpu() for _, _, st in shard]).half()
    if not torch.isfinite(aux).all():
        raise OverflowError("target features overflow float16; store them in a wider type")
    tensors = {
        "tokens": torch.tensor([t for _, seq, _ in shard for t in seq], dtype=torch.int32),
        "aux": aux.contiguous(),
        "topk_ids": torch.cat([st.topk_ids for _, _, st in shard]).to(torch.int32).cpu().contiguous(),
        "topk_logprobs": torch.cat([st.topk_logprobs for _, _, st in shard]).float().cpu().contiguous(),
        "trainable": torch.cat(masks),
        "relabel": torch.tensor([s.kind != "target" for s, _, _ in shard], dtype=torch.uint8),
    }
    name = f"features-{len(index['shards']):05d}.safetensors"
    tmp = os.path.join(out_dir, name + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(out_dir, name))
    index["shards"].append({"file": name, "ids": [s.id for s, _, _ in shard], "lengths": lengths,
                            "trainable": [int(m.sum()) for m in masks]})
    index["num_sequences"] += len(shard)
    _write_index(out_dir, index)


# ---------------------------------------------------------------- reading

def load_features(out_dir: str) -> FeatureSet:
    """A lazy view over every shard listed in the index."""
    index = _read_index(out_dir)
    if not index:
        raise FileNotFoundError(f"no {INDEX} in {out_dir}")
    if index.get("format") != FORMAT:
        raise ValueError(f"{out_dir} holds features of format {index.get('format')}, not {FORMAT}: recompute")
    refs = []
    for shard in index["shards"]:
        start = 0
        for row, (sid, length, trained) in enumerate(zip(shard["ids"], shard["lengths"], shard["trainable"])):
            refs.append(_SequenceRef(os.path.join(out_dir, shard["file"]), row, start, start + length, sid, trained))
            start += length
    return FeatureSet(tuple(index["aux_layers"]), index["hidden_size"], refs)


def features_fingerprint(out_dir: str) -> str:
    """The fingerprint of what `out_dir` holds (changes when it grows)."""
    index = _read_index(out_dir)
    if not index:
        raise FileNotFoundError(f"no {INDEX} in {out_dir}")
    return index["fingerprint"]


def _read_index(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, INDEX)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_index(out_dir: str, index: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, INDEX)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(index, f)
    os.replace(path + ".tmp", path)
