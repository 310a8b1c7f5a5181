"""Confidence calibration: Sequential Temperature Scaling (STS) and its metrics.

The scheduler reads a draft's confidences as survival probabilities:
a_j = prod_{i<=j} c_i is the chance that drafts 1..j are all accepted.
STS (design/speculation.md s.3) fits one temperature per position on
held-out blocks, in order k = 1..gamma: c_k -> sigmoid(logit(c_k) / T_k),
T_k chosen on a grid to minimise the expected calibration error of a_k
against the observed survival, with T_1..T_{k-1} already fixed.

A temperature only sharpens or flattens around 0.5; it cannot move the
mean. The trained heads' raw confidences are biased (DSpark on held-out
ShareGPT at position 1: 0.30 predicted against 0.24 accepted at T=1), so
the default calibration (`fit_logistic`) gives each position a scale and
a shift in logit space, c_k -> sigmoid(logit(c_k) / T_k + b_k), fitted by
log-loss on the blocks that reached position k (their conditional
acceptance). Log-loss, a proper scoring rule, rewards confidences that
both match the acceptance rate and tell drafts apart. ECE alone does not:
given a shift, the ECE-minimising search (`fit_sts` with `DEFAULT_SHIFTS`) flattens
a position to its base rate (DSpark: T_1 = 17.8, every first draft ~0.33),
calibrated on paper and useless to the scheduler. A position's entry is
[T_k, b_k]; a bare number is a temperature with no shift (STS, and the
checkpoints calibrated before shifts existed).

`logistic-peak` adds a second input: the peak of the head's draft
distribution (its largest probability, known before the draw like the
confidence; speculation.md s.4). At T=0 a draft survives only if it is the
target's argmax, which a peaked draft distribution tracks directly; on
DSpark's held-out records the peak alone predicted greedy survival better
than its confidence head (docs/draft-heads.md, phase 5). Its entries are
maps {"confidence": a, "peak": w, "bias": b}: sigmoid(a logit(c) + w
logit(peak) + b), fitted by log-loss like `logistic`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.spec.heads.config import PEAK_MAP_KEYS, position_map

DEFAULT_GRID = torch.logspace(-1.3, 1.3, 53).tolist()  # 0.05 .. 20
DEFAULT_SHIFTS = [round(0.1 * i, 1) for i in range(-15, 16)]  # logit shifts -1.5 .. 1.5
NO_SHIFT = [0.0]  # STS exactly as the contract states it
MIN_LOGISTIC_EVENTS = 30  # fewer blocks reached a position: too few to fit its scale and shift
MIN_LOGISTIC_SCALE = 1e-3
CALIBRATIONS = ("logistic", "logistic-peak", "sts")
NUM_BINS = 10
MIN_SURVIVALS = 5  # fewer observed survivals at a position: too little to fit a temperature


@dataclass
class BlockRecord:
    """One verification step: raw confidences of its drafts, how many
    survived, and the peaks of the draft distributions where the drafter
    reports them (a trained head)."""

    confidences: list[float]
    num_accepted: int
    peaks: list[float] | None = None


def record_row(record: BlockRecord) -> list:
    """A record as JSON: [confidences, accepted] or [confidences, accepted, peaks]."""
    row = [record.confidences, record.num_accepted]
    return row if record.peaks is None else row + [record.peaks]


def load_records(rows) -> list[BlockRecord]:
    """Records from `record_row` rows (eval-draft --records, fit records)."""
    return [BlockRecord(list(row[0]), int(row[1]), list(row[2]) if len(row) > 2 else None) for row in rows]


def peak_logits(records: list[BlockRecord], block_size: int) -> torch.Tensor | None:
    """logit(peak) [N, gamma] float64, or None if any record lacks peaks."""
    if any(r.peaks is None for r in records):
        return None
    return confidence_logits([BlockRecord(r.peaks, r.num_accepted) for r in records], block_size)[0]


def confidence_logits(records: list[BlockRecord], block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [N, gamma] float64, drafted [N, gamma] bool, survived [N, gamma] bool)."""
    n = len(records)
    logits = torch.zeros(n, block_size, dtype=torch.float64)
    drafted = torch.zeros(n, block_size, dtype=torch.bool)
    survived = torch.zeros(n, block_size, dtype=torch.bool)
    for i, r in enumerate(records):
        k = min(len(r.confidences), block_size)
        c = torch.tensor(r.confidences[:k], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        logits[i, :k] = torch.log(c / (1 - c))
        drafted[i, :k] = True
        survived[i, : min(r.num_accepted, k)] = True
    return logits, drafted, survived


def reached_positions(drafted: torch.Tensor, survived: torch.Tensor) -> torch.Tensor:
    """[N, gamma] bool: position k's own outcome is observed (drafts 1..k-1 survived)."""
    return drafted & torch.cat([torch.ones_like(survived[:, :1]), survived[:, :-1]], dim=1)


def expected_calibration_error(predicted: torch.Tensor, observed: torch.Tensor, num_bins: int = NUM_BINS) -> float:
    """Equal-width-bin ECE: sum over bins of |mean predicted - mean observed| * share.

    predicted: [M] in [0, 1]; observed: [M] bool/0-1.
    """
    if predicted.numel() == 0:
        return float("nan")
    return float(calibration_errors(predicted.reshape(1, -1), observed.reshape(-1), num_bins)[0])


def log_loss(predicted: torch.Tensor, observed: torch.Tensor) -> float:
    """Mean binary log-loss of predicted [M] in [0, 1] against observed [M] 0/1."""
    p, y = predicted.double().clamp(1e-6, 1 - 1e-6), observed.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def sampling_floor(predicted: torch.Tensor, trials: int = 200, seed: int = 0) -> float:
    """Median ECE of outcomes drawn from `predicted` [M] itself: what a
    perfectly calibrated predictor shows on as many events."""
    p = predicted.double()
    generator = torch.Generator().manual_seed(seed)
    return float(torch.tensor([expected_calibration_error(p, torch.rand(p.shape, generator=generator,
                                                                        dtype=torch.float64) < p)
                               for _ in range(trials)]).median())


def calibration_errors(predicted: torch.Tensor, observed: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """expected_calibration_error of each row of predicted [C, M] against
    the same observed [M]: [C] float64, in one bincount. Per bin,
    |sum predicted - sum observed| = |mean gap| * count (empty bins add 0)."""
    candidates, m = predicted.shape
    bins = (predicted * num_bins).long().clamp(max=num_bins - 1) + num_bins * torch.arange(candidates)[:, None]
    gap = torch.bincount(bins.flatten(), weights=(predicted.double() - observed.double()).flatten(),
                         minlength=num_bins * candidates)
    return gap.view(candidates, num_bins).abs().sum(dim=1) / m


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank statistic (ties get average ranks).

    scores: [M]; labels: [M] bool. NaN when only one class is present.
    """
    labels = labels.bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = scores.double().argsort()
    _, inverse, counts = torch.unique_consecutive(scores.double()[order], return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, 0) - counts + 1  # 1-based rank where each tie group starts
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = (first_rank + (counts - 1) / 2.0).double()[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def scaled_logits(logits: torch.Tensor, calibration: list | None, peaks: torch.Tensor | None = None) -> torch.Tensor:
    """Each position's calibration map applied to [N, gamma] confidence
    logits (logit(c_k) / T_k + b_k for STS entries; peak maps also read
    `peaks`, the peaks' logits, and fail without them); unchanged for None."""
    if calibration is None:
        return logits
    maps = [position_map(e) for e in calibration]
    weight, peak_weight, bias = (torch.tensor(column, dtype=logits.dtype) for column in zip(*maps))
    scaled = logits * weight + bias
    if bool(peak_weight.any()):
        if peaks is None:
            raise ValueError("this calibration reads the draft distributions' peaks; the records have none")
        scaled = scaled + peaks * peak_weight
    return scaled


def survival_probabilities(logits: torch.Tensor, calibration: list | None,
                           peaks: torch.Tensor | None = None) -> torch.Tensor:
    """Cumulative products of (scaled) confidences: [N, gamma]."""
    return torch.sigmoid(scaled_logits(logits, calibration, peaks)).cumprod(dim=1)


def fit_sts(records: list[BlockRecord], block_size: int, grid: list[float] | None = None,
            min_survivals: int = MIN_SURVIVALS, shifts: list[float] | None = None) -> list[list[float]]:
    """Sequential Temperature Scaling: one [temperature, shift] per position,
    fitted in order on the survival products. Temperatures alone (shift 0)
    by default, as the contract states it; `shifts=DEFAULT_SHIFTS` also
    searches a shift, which flattens weakly informative positions (module
    docstring) and is kept for comparison only.

    A position where fewer than `min_survivals` blocks survived carries too
    little evidence (any sharpening temperature "fits" all-zero labels and
    would turn a raw 0.6 into 0.99): it keeps the previous position's.
    """
    grid = grid or DEFAULT_GRID
    shifts = NO_SHIFT if shifts is None else shifts
    logits, drafted, survived = confidence_logits(records, block_size)
    shift_column = torch.tensor(shifts, dtype=torch.float64)[:, None]
    fitted: list[list[float]] = []
    prefix = torch.ones(logits.shape[0], dtype=torch.float64)  # prod of scaled c_1..c_{k-1}
    for k in range(block_size):
        rows = drafted[:, k]
        if int(survived[rows, k].sum()) < min_survivals:
            fitted.append(list(fitted[-1]) if fitted else [1.0, 0.0])
        else:
            x, before, observed = logits[rows, k], prefix[rows], survived[rows, k]
            best = (float("inf"), 1.0, 0.0)
            for t in grid:  # every shift of one temperature at once: [shifts, rows]
                errors = calibration_errors(before * torch.sigmoid(x / t + shift_column), observed)
                i = int(errors.argmin())
                if float(errors[i]) < best[0]:
                    best = (float(errors[i]), float(t), float(shifts[i]))
            fitted.append([best[1], best[2]])
        prefix = prefix * torch.sigmoid(logits[:, k] / fitted[-1][0] + fitted[-1][1])
    return fitted


def fit_logistic_weights(features: torch.Tensor, survived: torch.Tensor, reached: torch.Tensor,
                         initial: list[float], min_events: int = MIN_LOGISTIC_EVENTS,
                         first_fallback: list[float] | None = None) -> list[torch.Tensor]:
    """Per position k, weights (one per input, then a bias) of
    sigmoid(w . x + b) by log-loss over the blocks that reached k, started
    from `initial`. features [F, N, K] (logits); survived, reached [N, K].
    A position reached by fewer than `min_events` blocks reuses the
    previous position's weights (the first one `first_fallback`, or an
    error without one)."""
    weights: list[torch.Tensor] = []
    for k in range(features.shape[2]):
        rows = reached[:, k]
        if int(rows.sum()) < min_events:
            if not weights and first_fallback is None:
                raise ValueError(f"position 1 has {int(rows.sum())} events, fewer than {min_events}")
            weights.append(weights[-1] if weights else torch.tensor(first_fallback, dtype=torch.float64))
            continue
        x, y = features[:, rows, k].T.double(), survived[rows, k].double()
        w = torch.tensor(initial, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

        def loss():
            optimiser.zero_grad()
            value = torch.nn.functional.binary_cross_entropy_with_logits((x * w[:-1]).sum(dim=1) + w[-1], y)
            value.backward()
            return value

        optimiser.step(loss)
        weights.append(w.detach())
    return weights


def fit_logistic(records: list[BlockRecord], block_size: int,
                 min_events: int = MIN_LOGISTIC_EVENTS) -> list[list[float]]:
    """Per position, sigmoid(a * logit(c) + b) by log-loss on the blocks
    that reached it, as calibration entries [1 / a, b]. A position reached
    by fewer than `min_events` blocks keeps the previous position's; a
    confidence that ranks backwards (a <= 0) gets a flat one (a tiny a):
    its shift alone then carries the acceptance rate."""
    logits, drafted, survived = confidence_logits(records, block_size)
    weights = fit_logistic_weights(logits[None], survived, reached_positions(drafted, survived), [1.0, 0.0],
                                   min_events, first_fallback=[1.0, 0.0])
    return [[1.0 / max(float(a), MIN_LOGISTIC_SCALE), float(b)] for a, b in weights]


def fit_logistic_peak(records: list[BlockRecord], block_size: int,
                      min_events: int = MIN_LOGISTIC_EVENTS) -> list[dict]:
    """Per position, sigmoid(a logit(c) + w logit(peak) + b) by log-loss on
    the blocks that reached it, as entries {"confidence": a, "peak": w,
    "bias": b} (module doc). Needs records with peaks, from a head whose
    confidence is not its peak (else the two inputs are one)."""
    peaks = peak_logits(records, block_size)
    if peaks is None:
        raise ValueError("logistic-peak needs records with peaks (a trained head's drafts)")
    logits, drafted, survived = confidence_logits(records, block_size)
    if torch.equal(peaks[drafted], logits[drafted]):
        raise ValueError("logistic-peak needs a confidence head: this head's confidences are its peaks")
    weights = fit_logistic_weights(torch.stack([logits, peaks]), survived, reached_positions(drafted, survived),
                                   [1.0, 0.0, 0.0], min_events, first_fallback=[1.0, 0.0, 0.0])
    return [dict(zip(PEAK_MAP_KEYS, map(float, w))) for w in weights]


def fit_calibration(method: str, records: list[BlockRecord], block_size: int) -> list:
    """`logistic` (the default), `logistic-peak` (the confidence and the
    draft distribution's peak) or `sts` (temperatures alone, speculation.md s.3)."""
    if method == "logistic":
        return fit_logistic(records, block_size)
    if method == "logistic-peak":
        return fit_logistic_peak(records, block_size)
    if method == "sts":
        return fit_sts(records, block_size)
    raise ValueError(f"unknown calibration {method!r}; choose from {', '.join(CALIBRATIONS)}")


def calibration_methods(spec: str) -> dict[str, str]:
    """`--calibration`: one method for both temperatures, or one per
    temperature key ("0=logistic-peak,1=logistic": the peak pays at T=0,
    where survival is an argmax match, and not at T=1, docs/draft-heads.md
    phase 7)."""
    pairs = [part.split("=", 1) if "=" in part else ["", part] for part in spec.split(",")]
    if len(pairs) == 1 and not pairs[0][0]:
        pairs = [["0", pairs[0][1]], ["1", pairs[0][1]]]
    methods = {key.strip(): method.strip() for key, method in pairs}
    if set(methods) != {"0", "1"} or len(pairs) != 2:
        raise ValueError(f"--calibration {spec!r}: one method, or 0=METHOD,1=METHOD")
    for method in methods.values():
        if method not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {method!r}; choose from {', '.join(CALIBRATIONS)}")
    return methods


def methods_label(methods: dict[str, str]) -> str:
    """The `--calibration` spelling of `calibration_methods`' result."""
    names = set(methods.values())
    return names.pop() if len(names) == 1 else ",".join(f"{k}={m}" for k, m in sorted(methods.items()))


def calibration_report(records: list[BlockRecord], block_size: int, calibration: list | None = None) -> dict:
    """ECE of the survival products (all positions pooled and per position),
    and ECE and AUROC of the per-position confidence for conditional
    acceptance (position k accepted given that 1..k-1 were)."""
    logits, drafted, survived = confidence_logits(records, block_size)
    peaks = peak_logits(records, block_size)
    survival = survival_probabilities(logits, calibration, peaks)
    conditional = torch.sigmoid(scaled_logits(logits, calibration, peaks))
    reached = reached_positions(drafted, survived)
    return {
        "blocks": len(records),
        "ece_survival": expected_calibration_error(survival[drafted], survived[drafted]),
        "ece_survival_per_position": [expected_calibration_error(survival[drafted[:, k], k], survived[drafted[:, k], k])
                                      for k in range(block_size)],
        "ece_conditional": expected_calibration_error(conditional[reached], survived[reached]),
        "auroc_conditional": auroc(conditional[reached], survived[reached]),
        "mean_survival_predicted": float(survival[drafted].mean()) if drafted.any() else float("nan"),
        "mean_survival_observed": float(survived[drafted].double().mean()) if drafted.any() else float("nan"),
    }


def calibrate_per_temperature(head, heldout, loaded, prompts, max_tokens: int, seed: int = 0,
                              method: str | dict[str, str] = "logistic") -> dict:
    """Fit STS separately for greedy and sampled requests and store both
    in `head.config.calibration` ({"0": ..., "1": ...}; HeadDrafter picks
    by the request's temperature). `method`: one for both, or one per
    temperature key (`calibration_methods`).

    T=0: teacher-forced greedy walks over the held-out greedy responses
    (exact); T=1: real speculative decoding of the held-out prompts at
    temperature 1 (the head's raw confidences, every draft verified).
    Each is fitted on one half of the sequences (prompts) and checked on
    the other (out of sample: `check_raw` vs `check_sts`), then refitted
    on all of them for the checkpoint.
    """
    from engine.spec.training.data import chat_prompt_ids
    from engine.spec.training.evaluate import speculative_decode, teacher_forced_simulation
    from scheduler.request import SamplingParams

    block = head.config.block_size
    runs = {"0": [teacher_forced_simulation(head, heldout.subset(part)) for part in _halves(len(heldout))]}
    ids = [chat_prompt_ids(loaded.tokenizer, p) for p in prompts]
    if len(ids) >= 2:
        params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
        runs["1"] = [speculative_decode(loaded, head, [ids[i] for i in part], params, seed=seed)
                     for part in _halves(len(ids))]
    methods = calibration_methods(method) if isinstance(method, str) else method
    report, calibration = {}, {}
    for key, (fit, check) in runs.items():
        fitted = fit_calibration(methods[key], fit.records, block)
        report[f"T={key}"] = {"tau_fit_half": fit.tau, "tau_check_half": check.tau,
                              "check_raw": calibration_report(check.records, block),
                              "check_sts": calibration_report(check.records, block, fitted),
                              "calibration_fit_half": fitted}
        report[f"T={key}"]["method"] = methods[key]
        calibration[key] = fit_calibration(methods[key], fit.records + check.records, block)
    head.config.calibration = calibration
    report["calibration"] = calibration
    return report


def _halves(n: int) -> tuple[list[int], list[int]]:
    """Even and odd indices (interleaved, so both halves mix the sources)."""
    return list(range(0, n, 2)), list(range(1, n, 2))
