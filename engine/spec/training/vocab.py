"""Draft vocabularies: the target tokens a head may propose (EAGLE-3's trick).

The tokens the target most often picks (its argmax) at the trained
positions of the training features, mapped back to the target's ids.
A smaller LM head makes every draft step cheaper; the cost is that a
position whose target token is outside can never be drafted right, so
`coverage` reports the share of held-out positions it reaches.
"""
from __future__ import annotations

import os

import torch

from engine.spec.heads.checkpoint import read_head_weights
from engine.spec.training.features import FeatureSet, features_fingerprint, load_features

COUNTS_FILE = "target-choice-counts.pt"


def target_choice_counts(features: FeatureSet, vocab_size: int) -> torch.Tensor:
    """How often the target's argmax is each token, over the trained
    positions of `features`: [vocab_size] long."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(len(features)):
        counts += torch.bincount(_trained_choices(features, i), minlength=vocab_size)
    return counts


def cached_choice_counts(directories: list[str], vocab_size: int) -> torch.Tensor:
    """target_choice_counts summed over feature directories, each cached in
    it beside the fingerprint of the features it counted (a cache that
    grew or was recomputed is counted again)."""
    total = torch.zeros(vocab_size, dtype=torch.long)
    for directory in directories:
        path, key = os.path.join(directory, COUNTS_FILE), features_fingerprint(directory)
        cached = torch.load(path) if os.path.exists(path) else None
        if not isinstance(cached, dict) or cached.get("fingerprint") != key:
            cached = {"fingerprint": key, "counts": target_choice_counts(load_features(directory), vocab_size)}
            torch.save(cached, path)
        total += cached["counts"]
    return total


def _trained_choices(features: FeatureSet, index: int) -> torch.Tensor:
    """The target's argmax at each trained position of one sequence: row
    i-1 of the top-k predicts token i."""
    seq = features.sequence(index)
    predicts_trained = seq.trainable[1:]
    return seq.topk_ids[:-1, 0][predicts_trained]


def draft_vocabulary(counts: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` most frequent tokens, ascending by id (ties by id): [size] long."""
    if not 0 < size <= counts.numel():
        raise ValueError(f"draft vocabulary size must be in [1, {counts.numel()}]")
    order = torch.sort(counts, descending=True, stable=True).indices  # stable: ties by id
    return order[:size].sort().values


def checkpoint_draft_vocabulary(directory: str, size: int) -> torch.Tensor:
    """The draft vocabulary a head checkpoint was trained with. A head
    trained on from it (--init-from) keeps it: its LM-head rows are those
    tokens, whatever the counts of more data would pick now."""
    ids = read_head_weights(directory).get("draft_ids")
    if ids is None:
        raise ValueError(f"--init-from {directory} has no draft vocabulary (trained with --draft-vocab 0)")
    if ids.numel() != size:
        raise ValueError(f"--init-from {directory} drafts over {ids.numel()} tokens, not --draft-vocab {size}")
    return ids.long()


def coverage(features: FeatureSet, ids: torch.Tensor, vocab_size: int) -> float:
    """Share of the trained positions of `features` whose target argmax is in `ids`."""
    inside = torch.zeros(vocab_size, dtype=torch.bool)
    inside[ids] = True
    hits = total = 0
    for i in range(len(features)):
        choices = _trained_choices(features, i)
        hits += int(inside[choices].sum())
        total += choices.numel()
    return hits / total if total else float("nan")
