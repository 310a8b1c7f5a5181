"""PNG plots of benchmark levels against concurrency (matplotlib, Agg backend).

Input everywhere: {system name: [level summary dicts with "concurrency"]}.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

Series = Mapping[str, Sequence[dict]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    return plt


def _panel(ax, series: Series, value: Callable[[dict], float | None], title: str, ylabel: str,
           log_y: bool = False) -> None:
    for name, levels in series.items():
        points = [(lv["concurrency"], value(lv)) for lv in levels]
        points = [(c, v) for c, v in points if v is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    concurrencies = sorted({lv["concurrency"] for levels in series.values() for lv in levels})
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def plot_throughput(series: Series, path: Path, title: str = "") -> Path:
    """Aggregate and per-user output tokens/s against concurrency."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _panel(left, series, lambda lv: lv.get("aggregate_tokens_per_s"), "aggregate output", "tokens/s")
    _panel(right, series, lambda lv: lv.get("per_user_tokens_per_s"), "per user (mean)", "tokens/s")
    return _save(fig, left, path, title)


def plot_latency(series: Series, path: Path, title: str = "") -> Path:
    """Median TTFT and TPOT against concurrency."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _panel(left, series, lambda lv: _p(lv, "ttft_s", "p50"), "time to first token (p50)", "seconds",
           log_y=True)
    _panel(right, series, lambda lv: _p(lv, "tpot_s", "p50"), "time per output token (p50)", "seconds")
    return _save(fig, left, path, title)


def _p(level: dict, metric: str, q: str) -> float | None:
    return (level.get(metric) or {}).get(q)


def _save(fig, legend_ax, path: Path, title: str) -> Path:
    handles, labels = legend_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
