"""Target hidden states for training, computed once and cached on disk.

One teacher-forced pass of the target over every (prompt + response)
sequence collects the outputs of the chosen `aux_layers` (the drafter's
input) and the final normed hidden state (from which training recomputes
the target distribution p_t = softmax(LM_head(final)) only at the
positions it samples). The LM head is skipped in this pass: over a 49k
vocabulary it is most of the cost, and the labels are already known.

On disk: safetensors shards (float16) plus `features.json` with the
fingerprint of what was computed (target, layers, sequences). A rerun with
the same fingerprint loads the cache; an interrupted run resumes after the
last complete shard; a cache holding a superset of the layers is reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from engine.kv_cache import allocate_kv_caches
from engine.spec.training.generate import Sample, _progress
from kernels.attention import AttentionMetadata

INDEX = "features.json"
KV_BLOCK = 16


@dataclass
class FeatureSet:
    """Cached target states of a list of sequences (all tensors on CPU).

    Per sequence i: tokens[i] [T] long, aux[i] [T, A*H] and final[i] [T, H]
    (float16), prompt_lens[i] (loss only on response tokens), relabel[i]
    (the response is not the target's own: labels come from its argmax).
    """

    aux_layers: tuple[int, ...]
    hidden_size: int
    ids: list[str] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    aux: list[torch.Tensor] = field(default_factory=list)
    final: list[torch.Tensor] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)
    relabel: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> int:
        return sum(t.shape[0] for t in self.tokens)

    @property
    def num_response_tokens(self) -> int:
        return sum(t.shape[0] - p for t, p in zip(self.tokens, self.prompt_lens))

    def subset(self, indices: list[int]) -> "FeatureSet":
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return FeatureSet(self.aux_layers, self.hidden_size, pick(self.ids), pick(self.tokens),
                          pick(self.aux), pick(self.final), pick(self.prompt_lens), pick(self.relabel))

    def select_layers(self, aux_layers: tuple[int, ...]) -> "FeatureSet":
        """The same sequences with only `aux_layers` (in that order) in aux."""
        aux_layers = tuple(aux_layers)
        if aux_layers == self.aux_layers:
            return self
        missing = set(aux_layers) - set(self.aux_layers)
        if missing:
            raise ValueError(f"cached features lack layers {sorted(missing)} (have {self.aux_layers})")
        h = self.hidden_size
        cols = torch.cat([torch.arange(self.aux_layers.index(i) * h, (self.aux_layers.index(i) + 1) * h)
                          for i in aux_layers])
        return FeatureSet(aux_layers, h, self.ids, self.tokens, [a[:, cols] for a in self.aux],
                          self.final, self.prompt_lens, self.relabel)

    def split_by(self, predicate) -> tuple["FeatureSet", "FeatureSet"]:
        """(sequences whose id satisfies predicate, the others)."""
        yes = [i for i, sid in enumerate(self.ids) if predicate(sid)]
        no = [i for i, sid in enumerate(self.ids) if not predicate(sid)]
        return self.subset(yes), self.subset(no)


def fingerprint(target_path: str, aux_layers, samples: list[Sample], max_len: int) -> str:
    digest = hashlib.sha1(f"{target_path}|{list(aux_layers)}|{max_len}".encode())
    for s in samples:
        digest.update(f"{s.id}:{len(s.prompt_ids)}:{s.tokens[:max_len]}".encode())
    return digest.hexdigest()


def collect_features(loaded, samples: list[Sample], aux_layers, out_dir: str, max_len: int = 1024,
                     batch_tokens: int = 2048, shard_tokens: int = 65536,
                     progress: bool = True) -> FeatureSet:
    """Compute (or load from `out_dir`) the features of `samples`."""
    aux_layers = tuple(aux_layers)
    key = fingerprint(str(loaded.path), aux_layers, samples, max_len)
    index = _read_index(out_dir)
    if index and index.get("complete") and index["fingerprint"] == key:
        return load_features(out_dir)
    if not index or index["fingerprint"] != key:
        index = {"fingerprint": key, "aux_layers": list(aux_layers), "hidden_size": loaded.config.hidden_size,
                 "shards": [], "num_sequences": 0, "complete": False}
        _write_index(out_dir, index)
    _compute_remaining(loaded, samples, aux_layers, out_dir, index, max_len, batch_tokens, shard_tokens, progress)
    return load_features(out_dir)


def _compute_remaining(loaded, samples, aux_layers, out_dir, index, max_len, batch_tokens, shard_tokens, progress):
    todo = samples[index["num_sequences"]:]
    bar = _progress(len(todo), "features", progress)
    caches = allocate_kv_caches(loaded.config, _blocks_for(max(batch_tokens, max_len)), KV_BLOCK,
                                next(loaded.model.parameters()).dtype, "cpu")
    shard: list[tuple[Sample, list[int], torch.Tensor, torch.Tensor]] = []
    for batch in _batches(todo, max_len, batch_tokens):
        sequences = [s.tokens[:max_len] for s in batch]
        for sample, seq, (aux, final) in zip(batch, sequences, _forward(loaded, sequences, aux_layers, caches)):
            shard.append((sample, seq, aux, final))
        bar.update(len(batch), sum(len(s) for s in sequences))
        if sum(len(seq) for _, seq, _, _ in shard) >= shard_tokens:
            _write_shard(out_dir, index, shard)
            shard = []
    if shard:
        _write_shard(out_dir, index, shard)
    index["complete"] = True
    _write_index(out_dir, index)
    bar.close()


MAX_BATCH_SEQUENCES = 64


def _blocks_for(num_tokens: int) -> int:
    # Each sequence rounds up to whole blocks: one extra block per sequence.
    return num_tokens // KV_BLOCK + MAX_BATCH_SEQUENCES + 1


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


@torch.inference_mode()
def _forward(loaded, sequences: list[list[int]], aux_layers, caches):
    """One packed teacher-forced forward, no LM head: per sequence
    (aux [T, A*H] float16, final [T, H] float16)."""
    lengths = [len(s) for s in sequences]
    tables, next_block = [], 0
    for n in lengths:
        count = (n + KV_BLOCK - 1) // KV_BLOCK
        tables.append(list(range(next_block, next_block + count)))
        next_block += count
    if next_block > caches[0][0].shape[0]:
        raise ValueError(f"a feature batch needs {next_block} KV blocks, only {caches[0][0].shape[0]} allocated")
    meta = AttentionMetadata.build(lengths, lengths, tables, KV_BLOCK, "cpu")
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    positions = torch.cat([torch.arange(n) for n in lengths])
    final, aux = loaded.model(ids, positions, caches, meta, aux_layers=aux_layers)
    aux = torch.cat(aux, dim=-1).half()
    return list(zip(aux.split(lengths), final.half().split(lengths)))


def _write_shard(out_dir: str, index: dict, shard) -> None:
    lengths = [len(seq) for _, seq, _, _ in shard]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    tensors = {
        "tokens": torch.tensor([t for _, seq, _, _ in shard for t in seq], dtype=torch.int32),
        "aux": torch.cat([aux for _, _, aux, _ in shard]).contiguous(),
        "final": torch.cat([final for _, _, _, final in shard]).contiguous(),
        "offsets": offsets,
        "prompt_lens": torch.tensor([min(len(s.prompt_ids), n) for (s, _, _, _), n in zip(shard, lengths)],
                                    dtype=torch.int32),
        "relabel": torch.tensor([s.kind != "target" for s, _, _, _ in shard], dtype=torch.uint8),
    }
    name = f"features-{len(index['shards']):05d}.safetensors"
    tmp = os.path.join(out_dir, name + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(out_dir, name))
    index["shards"].append({"file": name, "ids": [s.id for s, _, _, _ in shard]})
    index["num_sequences"] += len(shard)
    _write_index(out_dir, index)


def load_features(out_dir: str) -> FeatureSet:
    """Read every shard listed in the index."""
    index = _read_index(out_dir)
    if not index:
        raise FileNotFoundError(f"no {INDEX} in {out_dir}")
    features = FeatureSet(tuple(index["aux_layers"]), index["hidden_size"])
    for shard in index["shards"]:
        _append_shard(features, load_file(os.path.join(out_dir, shard["file"])), shard["ids"])
    return features


def _append_shard(features: FeatureSet, tensors: dict, ids: list[str]) -> None:
    offsets = tensors["offsets"].tolist()
    for i, sid in enumerate(ids):
        start, end = offsets[i], offsets[i + 1]
        features.ids.append(sid)
        features.tokens.append(tensors["tokens"][start:end].long())
        features.aux.append(tensors["aux"][start:end])
        features.final.append(tensors["final"][start:end])
        features.prompt_lens.append(int(tensors["prompt_lens"][i]))
        features.relabel.append(bool(tensors["relabel"][i]))


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
