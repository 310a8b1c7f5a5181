"""tools.step_fit records every step of a run and fits its seconds on
requests, drafts and context."""
import pytest

from scheduler.request import SamplingParams
from tools.engine_ab import HEAD, build_engines, run_streams
from tools.step_fit import TERMS, fit, record_steps


def test_steps_are_recorded_with_their_drafts_and_the_models_price(tiny_dir):
    engine = build_engines(["ngram"], HEAD, str(tiny_dir))["ngram"]
    prompts = [engine.tokenizer.encode("one two three four one two three four one two three")] * 6
    rows = record_steps(engine)
    run_streams(engine, prompts, 2, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    assert rows and all(r["requests"] <= 2 and r["seconds"] > 0 for r in rows)
    assert any(r["drafts"] for r in rows) and any(r["prefill"] for r in rows)
    assert all(r["tokens"] >= r["requests"] + r["drafts"] for r in rows)
    assert all(r["priced_next_token"] is not None and r["priced_next_token"] >= 0 for r in rows)


def test_the_fit_recovers_known_costs_from_decode_steps_only():
    def step(requests, drafts, context, prefill=False):
        seconds = 0.01 + 0.004 * requests + 0.002 * drafts + 0.00001 * context + (1.0 if prefill else 0.0)
        return {"requests": requests, "drafts": drafts, "context": context, "prefill": prefill,
                "seconds": seconds, "priced_next_token": 0.003}
    rows = [step(r, d, c) for r, d, c in [(4, 0, 500), (4, 3, 520), (8, 1, 900), (8, 6, 1000), (2, 2, 300),
                                           (6, 0, 640)]] + [step(8, 0, 900, prefill=True)]
    result = fit(rows)
    assert result["decode_steps"] == 6
    assert [result[t] for t in TERMS] == pytest.approx([0.01, 0.004, 0.002, 0.00001], rel=1e-6)
    assert result["mean_priced_next_token"] == pytest.approx(0.003)
