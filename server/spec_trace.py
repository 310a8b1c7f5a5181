"""The `specserve` SSE extension: how each streamed token was produced.

Off unless a request asks for it with `"specserve": {"trace": true}` (and
`"stream": true`). Each chunk that carries new tokens then gets one more
top-level key, which OpenAI clients ignore (their chunk types allow extra
keys):

    "specserve": {
      "index": 0,                      # the choice these tokens belong to
      "tokens": [{"text": "def", "source": "accepted", "drafter": "ngram"}, ...],
      "verified": 4, "accepted": 3,    # this step's block for this request
      "load": {"batch_size": 3, "batched_tokens": 14, "queue": 0,
               "step_ms": 41.2, "sps": 24.3, "kv_cache_usage": 0.06}
    }

`source` is accepted (a draft the target accepted), corrected (the target's
token where it rejected a draft), bonus (the target's extra token after a
fully accepted block) or plain (no drafts verified this step); `drafter`
names who proposed the block (null for plain tokens). Token texts are the
text each token added: their concatenation runs ahead of `delta.content`
while text is held back for a stop string (and past it once one matched),
so a client aligns them on the content by length. Tokens that add no
visible text yet come in a chunk with `"choices": []`.

The load is the engine step's own: requests and query tokens in the packed
batch, the queue, the step's wall time and the steps per second it
achieved; the KV usage is the engine's latest snapshot.
"""
from __future__ import annotations

from typing import Any

from engine.outputs import EngineStats, RequestOutput
from engine.trace import StepTrace


def trace_extension(index: int, out: RequestOutput, stats: EngineStats) -> dict[str, Any] | None:
    """The `specserve` key for one output of choice `index` (None: nothing to say)."""
    trace = out.trace
    if trace is None or not trace.token_texts:
        return None
    return {"index": index, "tokens": _tokens(trace), "verified": trace.num_verified,
            "accepted": trace.num_accepted, "load": _load(trace, stats)}


def _tokens(trace: StepTrace) -> list[dict[str, Any]]:
    drafter = trace.drafter or None  # "" for a plain step
    return [{"text": text, "source": source.value, "drafter": drafter}
            for text, source in zip(trace.token_texts, trace.sources())]


def _load(trace: StepTrace, stats: EngineStats) -> dict[str, Any]:
    load = trace.load
    return {"batch_size": load.num_requests, "batched_tokens": load.num_tokens,
            "queue": load.num_waiting, "step_ms": round(load.step_ms, 3),
            "sps": round(load.steps_per_second, 2),
            "kv_cache_usage": round(stats.kv_cache_usage, 4)}
