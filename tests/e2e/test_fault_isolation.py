"""Fault injection (issue 11, defect 2): an error tied to one request fails
that request only; an error the engine cannot attribute stops it, fails
every request in flight with 503 and stops the server.

Faults are injected by wrapping one engine part so that it raises for
requests with the POISON seed. The engine-level tests drive LLMEngine
directly, so that the poisoned request surely shares its batch with the
others; the HTTP tests check what clients see.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from engine.client import AsyncEngineClient
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.outputs import EngineStalledError, RequestFailedError
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.server.helpers import assert_error, live_server, wait_until
from tests.tiny_model import make_tiny_model_dir

POISON = 424242
PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11, 9, 10], [12, 13, 14, 15, 16],
           [20, 21, 20, 21, 20, 21, 20]]


class InjectedFault(RuntimeError):
    """The error the tests inject."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-faults"), seed=11)


def make_engine(model_dir, method: str = "ngram") -> LLMEngine:
    config = EngineConfig(
        model=model_dir, served_model_name="tiny", machine_counters=False,
        cache=CacheConfig(block_size=8, num_blocks=200),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=128, max_model_len=256),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4))
    return LLMEngine(config, step_cost=StepCostModel.flat())


def greedy(seed: int | None = None, max_tokens: int = 16) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]):
    """Add every request at once, step until done: (tokens by id, failures by id).

    A request ends exactly once: with a finishing output or with a failure."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    failures, finished = {}, set()
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id not in failures and out.request_id not in finished
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finished.add(out.request_id)
        failures |= {f.request_id: f for f in engine.take_failures()}
    assert finished.isdisjoint(failures) and finished | set(failures) == set(requests)
    return tokens, failures


def is_poisoned(request) -> bool:
    return request.sampling_params.seed == POISON


def poison(obj, name: str, poisoned) -> None:
    """Make obj.name raise InjectedFault when poisoned(*args) says so."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        if poisoned(*args):
            raise InjectedFault(f"{name} fault")
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


FAULTS = {
    # stage -> (object path on the engine, attribute, predicate on the call's arguments)
    "forward": ("runner", "execute",
                lambda sched: any(is_poisoned(i.request) for i in sched.scheduled)),
    "stop check": ("outputs", "check_stop", lambda request, token: is_poisoned(request)),
    "drafting": ("drafter", "absorb", lambda request, hidden=None: is_poisoned(request)),
    "proposals": ("drafter", "propose",
                  lambda inputs: any(is_poisoned(i.request) for i in inputs)),
    "output": ("outputs", "make_output", lambda request, *rest: is_poisoned(request)),
}


def assert_idle(engine: LLMEngine) -> None:
    """Nothing left behind: no request, no KV block, no per-request state."""
    assert not engine.has_unfinished() and engine.requests == {}
    assert engine.scheduler.kv_usage == 0.0
    assert engine.outputs.states == {} and engine.runner.generators == {}


@pytest.mark.parametrize("stage", sorted(FAULTS))
def test_a_fault_in_one_request_fails_only_that_request(model_dir, stage):
    engine = make_engine(model_dir)
    requests = {f"r{i}": (prompt, greedy()) for i, prompt in enumerate(PROMPTS)}
    reference, _ = run_all(engine, requests)
    target, attribute, predicate = FAULTS[stage]
    poison(getattr(engine, target), attribute, predicate)
    requests["poisoned"] = (PROMPTS[0], greedy(seed=POISON))
    tokens, failures = run_all(engine, requests)
    assert set(failures) == {"poisoned"}
    assert isinstance(failures["poisoned"].error, InjectedFault)
    # The batch went on: every other request produced exactly its fault-free output.
    assert {rid: tokens[rid] for rid in reference} == reference
    assert_idle(engine)


def test_a_failing_add_leaves_nothing_behind(model_dir):
    engine = make_engine(model_dir)
    poison(engine.outputs, "add_request", is_poisoned)
    with pytest.raises(InjectedFault):
        engine.add_request("bad", PROMPTS[0], greedy(seed=POISON))
    assert_idle(engine)
    tokens, failures = run_all(engine, {"good": (PROMPTS[1], greedy())})
    assert failures == {} and len(tokens["good"]) == 16


def test_any_seed_is_safe_inside_the_engine(model_dir):
    """Seeds the protocol refuses still cannot raise in the engine thread."""
    engine = make_engine(model_dir)
    seeds = [2**64, 2**64 - 100, 2**63 - 1, -(2**63), 10**30, -(10**30)]
    sampled = {f"s{i}": (PROMPTS[i % 4], SamplingParams(temperature=1.0, max_tokens=8, seed=s,
                                                          ignore_eos=True))
               for i, s in enumerate(seeds)}
    tokens, failures = run_all(engine, sampled)
    assert failures == {} and all(len(t) == 8 for t in tokens.values())


def test_the_generate_helper_raises_for_a_failed_request(model_dir):
    engine = make_engine(model_dir)
    poison(engine.outputs, "check_stop", lambda request, token: is_poisoned(request))
    with pytest.raises(RequestFailedError):
        engine.generate([PROMPTS[0], PROMPTS[1]], [greedy(), greedy(seed=POISON)])
    assert_idle(engine)


def test_a_forward_that_always_fails_stalls_the_engine(model_dir):
    engine = make_engine(model_dir)
    poison(engine.runner, "execute", lambda sched: True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, greedy())
    failed = []
    with pytest.raises(EngineStalledError):
        for step in range(engine.isolation.max_barren_steps):
            engine.step()
            failed += engine.take_failures()
            engine.add_request(f"again{step}", PROMPTS[0], greedy())
    assert {f.request_id for f in failed} >= {"r0", "r1", "r2", "r3"}


def test_one_success_resets_the_stall_count(model_dir):
    engine = make_engine(model_dir)
    poison(engine.runner, "execute",
           lambda sched: any(is_poisoned(i.request) for i in sched.scheduled))
    for round_ in range(2 * engine.isolation.max_barren_steps):
        # A lone poisoned request fails alone (a barren step)...
        _, failures = run_all(engine, {f"p{round_}": (PROMPTS[0], greedy(seed=POISON))})
        assert set(failures) == {f"p{round_}"}
        # ...but a healthy request in between shows the engine works.
        _, failures = run_all(engine, {f"g{round_}": (PROMPTS[1], greedy(max_tokens=2))})
        assert failures == {}
    assert_idle(engine)


# ------------------------------------------------------------------ over HTTP


def _client(engine: LLMEngine) -> AsyncEngineClient:
    return AsyncEngineClient(engine, "tiny")


async def _send_all(url: str, bodies: list[dict]) -> list[tuple[int, list]]:
    """Send the bodies at once; (status, SSE payloads or [JSON body]) each."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async def one(body):
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                text = (await r.aread()).decode()
            if r.headers["content-type"].startswith("text/event-stream"):
                return r.status_code, [line[6:] for line in text.splitlines() if line]
            return r.status_code, [json.loads(text)]
        return await asyncio.gather(*(one(b) for b in bodies))


def _chat(seed=None, stream=False, max_tokens=24):
    return {"messages": [{"role": "user", "content": "tell me about rivers and rivers"}],
            "temperature": 0, "max_tokens": max_tokens, "seed": seed, "stream": stream,
            "ignore_eos": True}


@pytest.mark.parametrize("stream", [False, True])
def test_over_http_the_poisoned_request_gets_500_and_the_others_200(model_dir, stream):
    engine = make_engine(model_dir)
    poison(engine.runner, "execute",
           lambda sched: any(is_poisoned(i.request) for i in sched.scheduled))
    with live_server(_client(engine)) as srv:
        results = asyncio.run(_send_all(srv.url, [_chat(stream=stream)] * 3
                                        + [_chat(seed=POISON, stream=stream)]))
        healthy = httpx.get(srv.url + "/health").status_code
    *good, (bad_status, bad_body) = results
    assert all(status == 200 for status, _ in good)
    if stream:
        assert all(events[-1] == "[DONE]" for _, events in good)
    # The fault hits the first forward, before any byte was sent: a real 500, streamed or not.
    assert bad_status == 500 and bad_body[0]["error"]["code"] == "engine_request_failed"
    assert "InjectedFault" not in json.dumps(bad_body)  # details stay in the log
    assert healthy == 200
    assert wait_until(lambda: engine.scheduler.kv_usage == 0.0)


def test_a_fault_mid_stream_ends_that_stream_with_an_error_event(model_dir):
    engine = make_engine(model_dir)
    poison(engine.outputs, "check_stop",
           lambda request, token: is_poisoned(request) and request.num_output_tokens > 4)
    with live_server(_client(engine)) as srv:
        results = asyncio.run(_send_all(srv.url, [_chat(stream=True)] * 2
                                        + [_chat(seed=POISON, stream=True)]))
    *good, (bad_status, events) = results
    assert all(status == 200 and events[-1] == "[DONE]" for status, events in good)
    assert bad_status == 200 and "[DONE]" not in events  # headers were out: in-band
    assert any(json.loads(e)["choices"] for e in events[:-1])  # some text came first
    assert json.loads(events[-1])["error"]["code"] == "engine_request_failed"
    assert wait_until(lambda: engine.scheduler.kv_usage == 0.0)


def test_an_engine_loop_fault_fails_everything_with_503_and_stops_the_server(model_dir):
    engine = make_engine(model_dir)
    stopped = []
    schedule = engine.scheduler.schedule

    def schedule_then_crash():
        # Both requests in flight with a token out (the stream's headers are
        # sent): whatever the timing of their arrival.
        live = list(engine.requests.values())
        if len(live) == 2 and all(r.num_output_tokens for r in live):
            raise InjectedFault("scheduler bug")
        return schedule()

    engine.scheduler.schedule = schedule_then_crash
    with live_server(_client(engine), on_engine_dead=lambda: stopped.append(True)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        results = asyncio.run(_send_all(srv.url, [_chat(max_tokens=64),
                                                  _chat(max_tokens=64, stream=True)]))
        (plain_status, plain), (stream_status, events) = results
        assert plain_status == 503 and plain[0]["error"]["code"] == "engine_unavailable"
        assert stream_status == 200 and json.loads(events[-1])["error"]["code"] == (
            "engine_unavailable")
        # /health and /v1/models agree; new requests are refused at once.
        assert_error(http.get("/health"), 503)
        assert_error(http.get("/v1/models"), 503)
        assert_error(http.post("/v1/chat/completions", json=_chat()), 503)
        assert wait_until(lambda: stopped == [True], timeout=5)
