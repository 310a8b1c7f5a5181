"""Online calibration of draft confidences against realised acceptance.

A drafter's raw confidence c (a head's output, a draft probability, or an
n-gram heuristic) is mapped per draft position and per confidence bin to the
acceptance rate actually observed there, shrunk towards the raw value while
a bin has few observations (a Beta prior of `prior_strength` pseudo-trials).
A per-request factor then follows each request's own recent luck, since
acceptance varies widely between prompts (code copying vs free chat).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bin:
    trials: float = 0.0
    accepted: float = 0.0


@dataclass
class _RequestHistory:
    predicted: float = 0.0  # sum of calibrated predictions over observed positions
    accepted: float = 0.0


@dataclass
class CalibrationReport:
    """Predicted vs realised acceptance, for metrics."""

    observations: int
    mean_predicted: float
    mean_realised: float
    expected_calibration_error: float
    bins: list[tuple[float, float, int]] = field(default_factory=list)  # (predicted, realised, count)


class ConfidenceCalibrator:
    """Maps raw per-position confidences to calibrated survival probabilities."""

    def __init__(self, max_positions: int = 16, num_bins: int = 10, prior_strength: float = 8.0,
                 request_prior: float = 6.0, decay: float = 0.999):
        self.num_bins = num_bins
        self.prior_strength = prior_strength
        self.request_prior = request_prior
        self.decay = decay  # old evidence fades so the map tracks drift
        self.bins = [[_Bin() for _ in range(num_bins)] for _ in range(max_positions)]
        self.requests: dict[str, _RequestHistory] = {}
        # Reliability diagram of the calibrated predictions that were used.
        self._report_bins = [[0.0, 0.0, 0] for _ in range(num_bins)]

    def _bin(self, position: int, raw: float) -> _Bin:
        row = self.bins[min(position, len(self.bins) - 1)]
        return row[min(self.num_bins - 1, max(0, int(raw * self.num_bins)))]

    def calibrate(self, request_id: str, raw: list[float]) -> list[float]:
        """Calibrated conditional survival for each draft position."""
        factor = self._request_factor(request_id)
        out = []
        for position, c in enumerate(raw):
            b = self._bin(position, c)
            global_rate = (b.accepted + self.prior_strength * c) / (b.trials + self.prior_strength)
            out.append(min(1.0, max(0.0, global_rate * factor)))
        return out

    def _request_factor(self, request_id: str) -> float:
        history = self.requests.get(request_id)
        if history is None:
            return 1.0
        # Ratio of realised to predicted acceptance, shrunk towards 1.
        return (history.accepted + self.request_prior) / (history.predicted + self.request_prior)

    def observe(self, request_id: str, raw: list[float], predicted: list[float], num_accepted: int,
                learn: bool = True) -> None:
        """Record one verification: positions 1..num_accepted survived, the
        next one (if verified) was rejected, later ones were not observed.
        `learn=False`: confidences some other map produced (a block its
        drafter calibrated); they go into the report only, since the bins and
        the request's luck are what this map reads raw confidences with."""
        observed = min(len(raw), num_accepted + 1)
        history = self.requests.setdefault(request_id, _RequestHistory()) if learn else None
        for position in range(observed):
            accepted = 1.0 if position < num_accepted else 0.0
            self._update_report(predicted[position], accepted)
            if history is not None:
                self._update_bin(position, raw[position], accepted)
                history.predicted += predicted[position]
                history.accepted += accepted

    def _update_bin(self, position: int, raw: float, accepted: float) -> None:
        b = self._bin(position, raw)
        b.trials = b.trials * self.decay + 1.0
        b.accepted = b.accepted * self.decay + accepted

    def _update_report(self, predicted: float, accepted: float) -> None:
        row = self._report_bins[min(self.num_bins - 1, int(predicted * self.num_bins))]
        row[0] += predicted
        row[1] += accepted
        row[2] += 1

    def forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def report(self) -> CalibrationReport:
        total = sum(r[2] for r in self._report_bins)
        if not total:
            return CalibrationReport(0, 0.0, 0.0, 0.0)
        ece = sum(abs(r[0] - r[1]) for r in self._report_bins) / total
        bins = [(r[0] / r[2], r[1] / r[2], r[2]) for r in self._report_bins if r[2]]
        return CalibrationReport(total, sum(r[0] for r in self._report_bins) / total,
                                 sum(r[1] for r in self._report_bins) / total, ece, bins)
