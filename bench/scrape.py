"""The server's Prometheus metrics around a load level: speculative
decoding counters before and after give its drafts, accepted tokens and tau."""
from __future__ import annotations

import httpx

from bench.stream import Target

DRAFTS_METRIC = "specserve:spec_decode_num_drafts"
ACCEPTED_METRIC = "specserve:spec_decode_num_accepted_tokens"
DRAFT_TOKENS_METRIC = "specserve:spec_decode_num_draft_tokens"
# The same counters per drafter that proposed the block (the hybrid's n-gram and head apart).
BY_SOURCE = "_by_source"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value summed over label sets}; the
    per-source speculative counters also under `name{source}` keys."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            if "source" in sample.labels:
                values[f"{sample.name}{{{sample.labels['source']}}}"] = sample.value
    return values


async def scrape_metrics(client: httpx.AsyncClient, target: Target) -> dict[str, float] | None:
    """The target's metrics, or None when it has none (peers) or they fail."""
    if not target.metrics_path:
        return None
    try:
        response = await client.get(target.base_url + target.metrics_path, timeout=10.0)
        response.raise_for_status()
        return parse_metrics(response.text)
    except (httpx.HTTPError, ValueError):
        return None


def _counter(values: dict[str, float], name: str) -> float | None:
    # Counters are exposed with a `_total` suffix; accept either spelling.
    for key in (name + "_total", name):
        if key in values:
            return values[key]
    return None


def spec_decode_summary(before: dict | None, after: dict | None) -> dict | None:
    """Drafts and accepted tokens during the level; tau = 1 + accepted / drafts."""
    if before is None or after is None:
        return None
    deltas = {}
    for key, name in (("drafts", DRAFTS_METRIC), ("accepted_tokens", ACCEPTED_METRIC),
                      ("draft_tokens", DRAFT_TOKENS_METRIC)):
        b, a = _counter(before, name), _counter(after, name)
        deltas[key] = None if a is None or b is None else a - b
    if deltas["drafts"] is None or deltas["accepted_tokens"] is None:
        return None
    drafts = deltas["drafts"]
    deltas["mean_accepted_length"] = 1 + deltas["accepted_tokens"] / drafts if drafts > 0 else None
    by_source = _by_source(before, after)
    if by_source:
        deltas["by_source"] = by_source
    return deltas


def _by_source(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """{source: drafts, accepted_tokens, draft_tokens during the level} for
    the sources that drafted in it."""
    prefix = DRAFTS_METRIC + BY_SOURCE + "_total{"
    sources = [key[len(prefix):-1] for key in after if key.startswith(prefix)]
    out = {}
    for source in sources:
        counts = {key: after.get(f"{name}{BY_SOURCE}_total{{{source}}}", 0.0)
                  - before.get(f"{name}{BY_SOURCE}_total{{{source}}}", 0.0)
                  for key, name in (("drafts", DRAFTS_METRIC), ("accepted_tokens", ACCEPTED_METRIC),
                                    ("draft_tokens", DRAFT_TOKENS_METRIC))}
        if counts["drafts"] > 0:
            out[source] = counts
    return out
