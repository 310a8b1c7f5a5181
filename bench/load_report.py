"""Summaries, table, targets and plots of a Poisson-arrival sweep (bench/load_sweep.py).

A level's figures come from its requests: percentiles pool the requests of
every repeat of a (configuration, rate); the spread between repeats is
reported beside them as the noise. Goodput counts the requests that
finished within the SLO: TTFT <= `ttft_s` and TPOT (mean time per output
token after the first) <= `tpot_s`; a failed request misses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.plots import _pyplot
from bench.stats import percentile


@dataclass(frozen=True)
class Slo:
    """The latency a request must stay within to count as goodput."""

    ttft_s: float = 2.0
    tpot_s: float = 0.2

    def met_by(self, request: dict) -> bool:
        tpot = request.get("tpot")
        return bool(request["ok"] and request["ttft"] is not None and request["ttft"] <= self.ttft_s
                    and (tpot is None or tpot <= self.tpot_s))


def level_summary(record: dict, slo: Slo) -> dict:
    """One level (or repeats pooled, see `pool`) as flat figures."""
    requests = record["requests"]
    done = [r for r in requests if r["ok"]]
    duration = record["summary"]["duration_s"]
    good = sum(slo.met_by(r) for r in requests)
    budget = record.get("budget") or {}
    spent = sum(budget.values())
    return {
        "sent": len(requests), "completed": len(done),
        "tokens_per_s": sum(r["output_tokens"] for r in done) / duration if duration else 0.0,
        "per_user_tokens_per_s": _mean([r["output_tokens"] / r["e2e"] for r in done if r["e2e"]]),
        **_percentiles("ttft", [r["ttft"] for r in done if r["ttft"] is not None]),
        **_percentiles("itl", [gap for r in done for gap in r["itl"]]),
        **_percentiles("tpot", [r["tpot"] for r in done if r["tpot"] is not None]),
        "goodput_fraction": good / len(requests) if requests else 0.0,
        "goodput_per_s": good / duration if duration else 0.0,
        "draft_share": budget.get("draft", 0.0) / spent if spent else 0.0,
        "tau": (record.get("spec_decode") or {}).get("mean_accepted_length"),
    }


def _percentiles(name: str, values: list[float]) -> dict:
    return {f"{name}_p50": percentile(values, 50) or 0.0, f"{name}_p99": percentile(values, 99) or 0.0}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pool(records: Sequence[dict]) -> dict:
    """The repeats of one (configuration, rate) as one level."""
    budget: dict[str, float] = {}
    for r in records:
        for kind, count in (r.get("budget") or {}).items():
            budget[kind] = budget.get(kind, 0.0) + count
    spec = [r["spec_decode"] for r in records if r.get("spec_decode")]
    drafts = sum(s.get("drafts") or 0 for s in spec)
    accepted = sum(s.get("accepted_tokens") or 0 for s in spec)
    return {"requests": [q for r in records for q in r["requests"]], "budget": budget,
            "summary": {"duration_s": sum(r["summary"]["duration_s"] for r in records)},
            "spec_decode": {"mean_accepted_length": 1 + accepted / drafts} if drafts else None}


def aggregate(records: Sequence[dict], slo: Slo) -> dict[tuple[str, float], dict]:
    """(name, rate) -> pooled figures, with each repeat's TTFT p99 and tok/s."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["name"], r["rate"]), []).append(r)
    out = {}
    for key, group in groups.items():
        figures = level_summary(pool(group), slo)
        singles = [level_summary(r, slo) for r in group]
        figures["repeats"] = len(group)
        figures["ttft_p99_each"] = [s["ttft_p99"] for s in singles]
        figures["tokens_per_s_each"] = [s["tokens_per_s"] for s in singles]
        out[key] = figures
    return out


# ------------------------------------------------------------ table and targets


def markdown_table(table: dict[tuple[str, float], dict]) -> str:
    head = ("| rate (req/s) | config | tok/s | per-user tok/s | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) "
            "| TPOT p50 (ms) | goodput (% / req/s) | drafts % of budget | tau |")
    lines = [head, "|" + "---|" * 10]
    for (name, rate), f in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        spread = "" if f["repeats"] < 2 else " [" + ", ".join(f"{v:.1f}" for v in f["tokens_per_s_each"]) + "]"
        lines.append(
            f"| {rate:g} | {name} | {f['tokens_per_s']:.1f}{spread} | {_n(f['per_user_tokens_per_s'])} "
            f"| {f['ttft_p50']:.2f} / {f['ttft_p99']:.2f} | {1000 * f['itl_p50']:.0f} / {1000 * f['itl_p99']:.0f} "
            f"| {1000 * f['tpot_p50']:.0f} | {100 * f['goodput_fraction']:.0f} / {f['goodput_per_s']:.2f} "
            f"| {100 * f['draft_share']:.0f} | {_n(f['tau'], 2)} |")
    return "\n".join(lines)


def targets(table: dict[tuple[str, float], dict], reference: str = "off", candidate: str = "adaptive") -> str:
    """The issue's targets, rate by rate: TTFT p99 <= 1.05x off, goodput >= off,
    and at the lightest rate per-user tok/s >= the best static policy."""
    rates = sorted({rate for name, rate in table if name == candidate and (reference, rate) in table})
    lines = ["| rate | TTFT p99 adaptive / off | goodput adaptive - off (points) | per-user adaptive / best static |",
             "|---|---|---|---|"]
    for rate in rates:
        a, o = table[(candidate, rate)], table[(reference, rate)]
        ratio = a["ttft_p99"] / o["ttft_p99"] if o["ttft_p99"] else float("nan")
        goodput = 100 * (a["goodput_fraction"] - o["goodput_fraction"])
        lines.append(f"| {rate:g} | {ratio:.2f} ({'met' if ratio <= 1.05 else 'missed'}) "
                     f"| {goodput:+.0f} ({'met' if goodput >= 0 else 'missed'}) | {_static_ratio(table, rate, a)} |")
    return "\n".join(lines)


def _static_ratio(table: dict, rate: float, adaptive: dict) -> str:
    statics = [(f["per_user_tokens_per_s"] or 0.0, name) for (name, r), f in table.items()
               if r == rate and name.startswith("static")]
    if not statics:
        return "-"
    best, name = max(statics)
    ratio = (adaptive["per_user_tokens_per_s"] or 0.0) / best if best else float("nan")
    return f"{ratio:.2f} vs {name} ({'met' if ratio >= 1.0 else 'missed'})"


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------ plots


PANELS = (("tokens_per_s", "output tokens/s", False), ("ttft_p99", "TTFT p99 (s)", True),
          ("itl_p99", "ITL p99 (s, between chunks)", True), ("goodput_fraction", "goodput (share of requests)", False))


def plot_against_rate(table: dict[tuple[str, float], dict], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    names = sorted({name for name, _ in table})
    for ax, (key, label, log_y) in zip(axes.flat, PANELS):
        for name in names:
            points = sorted((rate, f[key]) for (n, rate), f in table.items() if n == name)
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log" if log_y else "linear")
        if key == "goodput_fraction":
            ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("Poisson arrival rate (requests/s)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, records: Sequence[dict], slo: Slo, args: dict) -> None:
    """table.md (figures and targets) and load.png."""
    table = aggregate(records, slo)
    text = (f"{markdown_table(table)}\n\nTargets:\n\n{targets(table)}\n\n"
            f"SLO: TTFT <= {slo.ttft_s:g} s and TPOT <= {1000 * slo.tpot_s:g} ms; "
            "tok/s in brackets: each repeat.\n")
    (out_dir / "table.md").write_text(text)
    title = f"{args.get('dataset')}, {args.get('max_tokens')} tokens, Poisson arrivals"
    plot_against_rate(table, out_dir / "load.png", title)
