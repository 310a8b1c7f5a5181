"""Tables of tools.dtype_sweep's results (markdown)."""
from __future__ import annotations

from typing import Sequence


def best_levels(record: dict) -> dict:
    """(dataset, concurrency) -> best per-user and aggregate wall tok/s and
    best tokens per server CPU second over the rounds, and how far the
    rounds' per-user figures spread."""
    out: dict = {}
    for rnd in record["rounds"]:
        for dataset, levels in rnd["levels"].items():
            for lv in levels:
                entry = out.setdefault((dataset, lv["concurrency"]), {"user": [], "agg": [], "cpu": [], "tau": []})
                entry["user"].append(lv["per_user_tokens_per_s"] or 0.0)
                entry["agg"].append(lv["aggregate_tokens_per_s"] or 0.0)
                entry["cpu"].append(lv.get("tokens_per_cpu_s") or 0.0)
                entry["tau"].append((lv.get("spec_decode") or {}).get("mean_accepted_length"))
    return {k: {"user": max(v["user"]), "agg": max(v["agg"]), "cpu": max(v["cpu"]), "tau": v["tau"][0],
                "spread": (max(v["user"]) - min(v["user"])) / max(min(v["user"]), 1e-9)}
            for k, v in out.items()}


def e2e_table(records: Sequence[dict], datasets: Sequence[str]) -> str:
    """Rows: configs; per dataset and concurrency: best per-user / aggregate
    wall tok/s over the rounds [tokens per server CPU second] (spread)."""
    best = {r["name"]: best_levels(r) for r in records}
    levels = sorted({c for b in best.values() for (_, c) in b})
    head = "| config | " + " | ".join(f"{d} c={c:g}" for d in datasets for c in levels) + " |"
    lines = [head, "|---|" + "---|" * (len(datasets) * len(levels))]
    for r in records:
        cells = []
        for d in datasets:
            for c in levels:
                e = best[r["name"]].get((d, c))
                tau = f" tau {e['tau']:.2f}" if e and e["tau"] else ""
                cells.append("-" if e is None else
                             f"{e['user']:.1f} / {e['agg']:.1f} [{e['cpu']:.1f}] ({e['spread']:.0%}){tau}")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(records: Sequence[dict], datasets: Sequence[str], reference: str) -> str:
    """Each config over the reference config, same prompt set: single stream
    (c=1) and eight streams (c=8), in tokens per server CPU second and in
    wall tok/s (per-user at c=1, aggregate at c=8)."""
    best = {r["name"]: best_levels(r) for r in records}
    if reference not in best:
        return f"(no {reference} config)"
    cols = [(d, c, key) for d in datasets for c in (1, 8) for key in ("cpu", "user" if c == 1 else "agg")]
    names = {"cpu": "CPU", "user": "wall", "agg": "wall"}
    lines = ["| config | " + " | ".join(f"{d} c={c} {names[k]}" for d, c, k in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in records:
        cells = []
        for d, c, key in cols:
            mine, ref = best[r["name"]].get((d, c)), best[reference].get((d, c))
            cells.append("-" if not mine or not ref or not ref[key] else f"{mine[key] / ref[key]:.2f}x")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement(texts: dict, reference: dict) -> dict:
    """Per prompt set and concurrency: outputs equal to the plain solo ones."""
    return {key: sum(a == b for a, b in zip(outs, reference[key.split("@")[0] + "@1"]))
            for key, outs in texts.items()}


def agreement_table(records: Sequence[dict], num_prompts: int) -> str:
    """Greedy outputs equal to the same mode's plain outputs one at a time."""
    plain = {r["mode"]: r["texts"] for r in records if not r["speculative"]}
    keys = sorted({k for r in records for k in r["texts"]})
    lines = ["| config | " + " | ".join(f"{k} equal / {num_prompts}" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for r in records:
        if r["mode"] not in plain:
            continue
        counts = agreement(r["texts"], plain[r["mode"]])
        lines.append(f"| {r['name']} | " + " | ".join(str(counts[k]) for k in keys) + " |")
    return "\n".join(lines)
