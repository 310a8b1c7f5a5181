"""Does a context feature beside the confidence and the peak calibrate
every set out of fit? (issue 13, phase 29)

The committed head's T=0 map (`logistic-peak`: sigmoid(a logit(c) + w
logit(peak) + b) per position), fitted on held-out ShareGPT, reads
HumanEval's confidences high out of fit (3.6% conditional ECE against
MT-Bench's 2.3%). This fits the same map with one more input per block,
each known before the head draws (speculation.md s.4), and scores it out
of fit:

- `fence`: the context is inside a ``` code fence (an odd number of
  fences in prompt and reply so far): code or not;
- `history`: the request's own first drafts so far, logit of their
  smoothed acceptance (HISTORY_PRIOR over HISTORY_WEIGHT pseudo-blocks);
- `position`: log(1 + the anchor's position in the reply).

Records come from teacher-forced greedy walks (exact at T=0) over cached
feature sets: the fit set (held-out ShareGPT) and check sets (cached
evaluation sequences). `--whole` adds eval-draft --records reports
(the whole evaluation sets, real decoding), where only `history` can be
computed (their origins give each block's request and step, not its
tokens).

    python -m engine.spec.training.scripts.calibration_features \\
        --draft-model runs/heads-smollm2/dspark-c9989-1 \\
        --fit runs/calib-data-code/features-heldout \\
        --check humaneval=DATA/features-eval-humaneval mtbench=DATA/features-eval-mtbench \\
        --whole runs/calib-c9989-1/whole/dspark-mtbench.json runs/calib-c9989-1/whole/dspark-humaneval.json
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from engine.spec.training.calibrate import (BlockRecord, confidence_logits, expected_calibration_error,
                                           fit_logistic_weights, log_loss, peak_logits, reached_positions)

FEATURES = ("fence", "history", "position")
HISTORY_PRIOR, HISTORY_WEIGHT = 0.4, 8.0
FENCE = "```"


@dataclass
class ContextRecords:
    """Blocks with the context features known before each was drafted."""

    records: list[BlockRecord]
    requests: list[int]  # the request (sequence) each block belongs to
    features: dict[str, list[float]]  # name -> one value per block

    def subset(self, keep: list[int]) -> "ContextRecords":
        return ContextRecords([self.records[i] for i in keep], [self.requests[i] for i in keep],
                              {name: [values[i] for i in keep] for name, values in self.features.items()})


def history_logits(requests: list[int], accepted: list[int]) -> list[float]:
    """Per block (in verification order), the logit of its request's
    smoothed first-draft acceptance over the blocks before it."""
    seen: dict[int, tuple[int, int]] = {}
    out = []
    for request, num_accepted in zip(requests, accepted):
        hits, blocks = seen.get(request, (0, 0))
        rate = (hits + HISTORY_PRIOR * HISTORY_WEIGHT) / (blocks + HISTORY_WEIGHT)
        out.append(math.log(rate / (1 - rate)))
        seen[request] = (hits + (num_accepted > 0), blocks + 1)
    return out


def fence_counts(tokenizer, token_ids) -> dict[int, int]:
    """Code fences in each token's text."""
    return {t: tokenizer.decode([t]).count(FENCE) for t in set(token_ids)}


def inside_fence(tokens: list[int], upto: int, counts: dict[int, int]) -> float:
    """1.0 if tokens[:upto + 1] hold an odd number of fences."""
    return float(sum(counts[t] for t in tokens[: upto + 1]) % 2)


def walked(head, features, tokenizer) -> ContextRecords:
    """Teacher-forced walks over a feature set, each block with all three features."""
    from engine.spec.training.evaluate import teacher_forced_simulation

    result = teacher_forced_simulation(head, features)
    order = sorted(range(len(result.records)), key=lambda i: result.origins[i])  # per sequence, by anchor
    records = [result.records[i] for i in order]
    origins = [result.origins[i] for i in order]
    sequences = {n: features.tokens(n) for n in {n for n, _ in origins}}  # (tokens, first trained)
    tokens = {n: ids.tolist() for n, (ids, _) in sequences.items()}
    counts = fence_counts(tokenizer, [t for ids in tokens.values() for t in ids])
    requests = [n for n, _ in origins]
    return ContextRecords(records, requests, {
        "fence": [inside_fence(tokens[n], anchor, counts) for n, anchor in origins],
        "history": history_logits(requests, [r.num_accepted for r in records]),
        "position": [math.log1p(anchor - sequences[n][1]) for n, anchor in origins]})


def decoded(path: str, temperature: str = "0") -> ContextRecords:
    """An eval-draft --records report: `history` only, blocks in engine-step order."""
    from engine.spec.training.scripts.served_calibration import load_check

    check = load_check(path, temperature)
    order = sorted(range(len(check.records)), key=lambda i: check.origins[i][1])
    records = [check.records[i] for i in order]
    requests = [check.origins[i][0] for i in order]
    return ContextRecords(records, requests, {"history": history_logits(requests, [r.num_accepted for r in records])})


def _inputs(data: ContextRecords, feature: str | None, block_size: int):
    """([F, N, K] logits of confidence, peak and the feature; survived; reached)."""
    logits, drafted, survived = confidence_logits(data.records, block_size)
    peaks = peak_logits(data.records, block_size)
    if peaks is None:
        raise ValueError("the map reads the draft distributions' peaks; these records have none "
                         "(a trained head's have)")
    inputs = [logits, peaks]
    if feature is not None:
        inputs.append(torch.tensor(data.features[feature], dtype=torch.float64)[:, None].expand(-1, block_size))
    return torch.stack(inputs), survived, reached_positions(drafted, survived)


def fit(data: ContextRecords, feature: str | None, block_size: int) -> torch.Tensor:
    """Per position weights [K, F + 1] (inputs, then the bias), by log-loss."""
    inputs, survived, reached = _inputs(data, feature, block_size)
    start = [1.0] + [0.0] * inputs.shape[0]
    return torch.stack(fit_logistic_weights(inputs, survived, reached, start, first_fallback=start))


def score(weights: torch.Tensor, data: ContextRecords, feature: str | None, block_size: int):
    """(predicted, survived) of every reached position under `weights`."""
    inputs, survived, reached = _inputs(data, feature, block_size)
    z = (inputs * weights[:, :-1].T[:, None, :]).sum(dim=0) + weights[:, -1]
    return torch.sigmoid(z)[reached], survived[reached]


def _cell(predicted: torch.Tensor, survived: torch.Tensor) -> str:
    return f"{expected_calibration_error(predicted, survived):.3f} ({log_loss(predicted, survived):.4f})"


def feature_rows(fit_set: ContextRecords, checks: dict[str, ContextRecords], features: list[str | None],
                 block_size: int) -> list[str]:
    """Markdown: per feature, the fit set's check half (fitted on the other
    half, by request parity) and each check set pooled (fitted on all)."""
    names = list(checks)
    rows = ["| input beside confidence and peak | fit set: check half | " + " | ".join(names) + " | pooled |",
            "|---" * (len(names) + 3) + "|"]
    halves = [fit_set.subset([i for i, r in enumerate(fit_set.requests) if r % 2 == parity]) for parity in (0, 1)]
    for feature in features:
        cells = [_cell(*score(fit(halves[0], feature, block_size), halves[1], feature, block_size))]
        weights = fit(fit_set, feature, block_size)
        scored = [score(weights, checks[name], feature, block_size) for name in names]
        cells += [_cell(*s) for s in scored]
        cells.append(_cell(torch.cat([p for p, _ in scored]), torch.cat([y for _, y in scored])))
        rows.append(f"| {feature or 'none'} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft-model", required=True, help="the head, uncalibrated (its raw confidences are fitted)")
    parser.add_argument("--fit", required=True, help="cached feature set the maps are fitted on (held-out)")
    parser.add_argument("--check", nargs="+", default=[], help="NAME=FEATURES_DIR cached sets scored out of fit")
    parser.add_argument("--whole", nargs="*", default=[], help="eval-draft --records reports (T=0), history only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from engine.models.default import default_model_path
    from engine.models.loader import load_model
    from engine.spec.heads.checkpoint import load_head
    from engine.spec.training.features import load_features

    torch.set_num_threads(args.threads)
    loaded = load_model(default_model_path(), torch.bfloat16)
    head = load_head(args.draft_model, loaded.model, torch.bfloat16, "cpu")
    head.use_inference_kernels()
    block = head.config.block_size
    fit_set = walked(head, load_features(args.fit), loaded.tokenizer)
    checks = {name: walked(head, load_features(path), loaded.tokenizer)
              for name, path in (spec.split("=", 1) for spec in args.check)}
    print(f"\nT=0, teacher-forced walks: conditional ECE (log-loss); fit on {args.fit} "
          f"({len(fit_set.records)} blocks)\n")
    print("\n".join(feature_rows(fit_set, checks, [None, *FEATURES], block)))
    if args.whole:
        whole = {path.rsplit("/", 1)[-1].removesuffix(".json"): decoded(path) for path in args.whole}
        print("\nT=0, whole evaluation sets (real decoding, eval-draft --records)\n")
        print("\n".join(feature_rows(fit_set, whole, [None, "history"], block)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
