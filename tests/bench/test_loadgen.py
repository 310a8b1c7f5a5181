"""Load generator: Poisson schedule, stream recording, metrics, bounded levels.

The fake servers here are raw asyncio TCP servers on 127.0.0.1, so that the
streams are real HTTP, chunked exactly as we choose: peers' quirks (no
[DONE], no usage, connection close) and a server that never answers.
"""
import asyncio
import json

import pytest

from bench.datasets import chat_prompts
from bench.loadgen import LoadConfig, poisson_schedule, request_body, run_concurrency, run_rate
from bench.scrape import parse_metrics, spec_decode_summary
from bench.stream import StreamRecorder, Target
from bench.sse import SSEEvent
from bench.stats import RequestResult

# ------------------------------------------------------------ pure parts


def test_poisson_schedule_bounds():
    arrivals = poisson_schedule(rate=50.0, max_requests=1000, max_seconds=2.0, seed=1)
    assert arrivals == sorted(arrivals) and all(0 < t < 2.0 for t in arrivals)
    assert 60 < len(arrivals) < 140  # about rate * time = 100
    assert len(poisson_schedule(rate=1000.0, max_requests=7, max_seconds=100.0)) == 7
    assert poisson_schedule(3.0, 10, 5.0, seed=2) == poisson_schedule(3.0, 10, 5.0, seed=2)
    with pytest.raises(ValueError):
        poisson_schedule(0.0, 1, 1.0)


def test_poisson_mean_gap():
    arrivals = poisson_schedule(rate=4.0, max_requests=4000, max_seconds=1e9, seed=0)
    assert arrivals[-1] / len(arrivals) == pytest.approx(0.25, rel=0.08)


def test_request_body_length_control():
    prompt = chat_prompts()[0]
    target = Target("t", "http://x", "m", ignore_eos_body={"ignore_eos": True}, extra_body={"seed": 1})
    body = request_body(target, prompt, LoadConfig(max_tokens=9))
    assert body["max_tokens"] == 9 and body["stream"] and body["ignore_eos"] and body["seed"] == 1
    assert body["stream_options"] == {"include_usage": True}
    assert "ignore_eos" not in request_body(target, prompt, LoadConfig(ignore_eos=False))


def _chunk(text=None, usage=None, finish=None):
    choices = [] if text is None and finish is None else [
        {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]
    return SSEEvent(json.dumps({"choices": choices, "usage": usage}))


def test_recorder_prefers_usage_then_tokenizer_then_chunks():
    events = [_chunk(""), _chunk("Hel"), _chunk("lo"), _chunk(" you", finish="length")]
    for usage, counter, expected, source in [
        ({"completion_tokens": 7, "prompt_tokens": 3}, None, 7, "usage"),
        (None, lambda text: len(text), len("Hello you"), "tokenizer"),
        (None, None, 3, "chunks"),
    ]:
        rec = RequestResult(ok=False)
        recorder = StreamRecorder(rec, sent_at=0.0)
        for i, event in enumerate(events + ([_chunk(usage=usage)] if usage else [])):
            recorder.on_event(event, now=1.0 + i)
        recorder.finish(10.0, counter)
        assert (rec.output_tokens, rec.token_count_source, rec.ok) == (expected, source, True)
        assert rec.ttft == 2.0  # the empty role chunk is not a token
        assert rec.itl == [1.0, 1.0] and rec.e2e == 10.0 and rec.finish_reason == "length"


def test_metrics_parsing_and_accepted_length():
    text = ("# TYPE specserve:spec_decode_num_drafts counter\n"
            "specserve:spec_decode_num_drafts_total 10.0\n"
            "# TYPE specserve:spec_decode_num_accepted_tokens counter\n"
            "specserve:spec_decode_num_accepted_tokens_total 12.0\n"
            "# TYPE specserve:spec_decode_num_accepted_tokens_per_pos counter\n"
            'specserve:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 8.0\n'
            'specserve:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 4.0\n')
    before = parse_metrics(text)
    assert before["specserve:spec_decode_num_accepted_tokens_per_pos_total"] == 12.0
    after = parse_metrics(text.replace("drafts_total 10.0", "drafts_total 30.0")
                          .replace("tokens_total 12.0", "tokens_total 42.0"))
    summary = spec_decode_summary(before, after)
    assert summary["drafts"] == 20 and summary["accepted_tokens"] == 30
    assert summary["mean_accepted_length"] == pytest.approx(2.5)
    assert spec_decode_summary(before, before)["mean_accepted_length"] is None
    assert spec_decode_summary(None, after) is None
    assert spec_decode_summary({}, {}) is None


def test_accepted_length_per_draft_source():
    """The hybrid's n-gram and head blocks apart, from the labelled counters;
    a source that did not draft during the level is left out."""
    def exposition(ngram: tuple, head: tuple) -> str:
        lines = []
        for metric in ("drafts", "draft_tokens", "accepted_tokens"):
            lines.append(f"# TYPE specserve:spec_decode_num_{metric}_by_source counter")
            for source, counts in (("ngram", ngram), ("dspark", head)):
                value = counts[("drafts", "draft_tokens", "accepted_tokens").index(metric)]
                lines.append(f'specserve:spec_decode_num_{metric}_by_source_total{{source="{source}"}} {value}')
        totals = [a + b for a, b in zip(ngram, head)]
        lines += ["# TYPE specserve:spec_decode_num_drafts counter",
                  f"specserve:spec_decode_num_drafts_total {totals[0]}",
                  "# TYPE specserve:spec_decode_num_accepted_tokens counter",
                  f"specserve:spec_decode_num_accepted_tokens_total {totals[2]}"]
        return "\n".join(lines) + "\n"

    before = parse_metrics(exposition((4.0, 20.0, 9.0), (2.0, 6.0, 1.0)))
    after = parse_metrics(exposition((10.0, 50.0, 30.0), (2.0, 6.0, 1.0)))
    summary = spec_decode_summary(before, after)
    assert summary["by_source"] == {"ngram": {"drafts": 6.0, "accepted_tokens": 21.0, "draft_tokens": 30.0}}
    assert summary["drafts"] == 6 and summary["accepted_tokens"] == 21

# ------------------------------------------------------------ fake servers


async def _read_request(reader) -> dict:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return json.loads(await reader.readexactly(length))


def peer_like_handler(tokens: int, delay: float = 0.0, finish: bool = True):
    """Streams `tokens` chunks in odd-sized writes, no usage, no [DONE]; then closes."""
    async def handle(reader, writer):
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        n = min(tokens, body["max_tokens"])
        stream = ": hello\n\n" + "".join(
            f'data: {json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})}\n\n'
            for i in range(n))
        if finish:  # transformers serve ends so: a finish_reason, then no [DONE]
            stream += f'data: {json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})}\n\n'

        for i in range(0, len(stream), 37):  # split anywhere, even inside lines
            writer.write(stream[i:i + 37].encode())
            await writer.drain()
            await asyncio.sleep(delay)
        writer.close()
    return handle


def hanging_handler(reader, writer):
    async def handle():
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n: wait\n\n")
        await asyncio.sleep(3600)
    return handle()


def error_handler():
    async def handle(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
        await writer.drain()
        writer.close()
    return handle


async def _with_server(handler, scenario):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await scenario(Target("fake", f"http://127.0.0.1:{port}", "m"))
    finally:
        server.close()


def run_level(handler, mode="concurrency", **config):
    from bench.loadgen import new_client

    load = LoadConfig(**{"max_tokens": 5, "num_requests": 6, **config})

    async def scenario(target):
        async with new_client(load) as client:
            if mode == "rate":
                return await run_rate(client, target, chat_prompts(), 50.0, load, max_concurrency=2)
            return await run_concurrency(client, target, chat_prompts(), 3, load)
    return asyncio.run(_with_server(handler, scenario))


def test_peer_without_done_or_usage_counts_chunks():
    level = run_level(peer_like_handler(tokens=50))
    s = level.summary
    assert (s["sent"], s["completed"], s["failed"]) == (6, 6, 0)
    assert s["output_tokens"] == 30 and s["token_count_source"] == "chunks"
    assert all(len(r.itl) == 4 for r in level.results)
    assert level.spec_decode is None  # no metrics endpoint


def test_a_closed_loop_level_reads_its_steady_part_until_the_last_send():
    """3 users, 6 requests: the window ends when the 6th is sent (each user
    busy until then); it holds the first three answers' tokens at least."""
    level = run_level(peer_like_handler(tokens=5, delay=0.005))
    s = level.summary
    last_send = max(r.start for r in level.results)
    assert s["steady_window_s"] == pytest.approx(last_send, abs=0.01)
    first_answers = sorted(level.results, key=lambda r: r.start)[:3]
    assert all(r.start + r.e2e <= s["steady_window_s"] + 0.01 for r in first_answers)
    assert 15 / s["steady_window_s"] <= s["steady_aggregate_tokens_per_s"] <= 30 / s["steady_window_s"]
    # As many requests as users: no steady part.
    assert run_level(peer_like_handler(tokens=5), num_requests=3).summary["steady_aggregate_tokens_per_s"] is None
    assert run_level(peer_like_handler(tokens=3), mode="rate").summary["steady_window_s"] is None


def test_a_stream_cut_before_its_end_is_a_failure():
    level = run_level(peer_like_handler(tokens=3, finish=False))
    s = level.summary
    assert s["sent"] == s["failed"] == 6
    assert any("without a finish_reason" in e for e in s["errors"])


def test_rate_mode_sends_every_scheduled_request():
    level = run_level(peer_like_handler(tokens=3), mode="rate", max_seconds=5.0)
    assert level.summary["sent"] == level.summary["completed"] == 6


def test_http_errors_are_failures_with_text():
    level = run_level(error_handler())
    s = level.summary
    assert s["sent"] == s["failed"] == 6 and s["completed"] == 0
    assert any("HTTP 503: busy" in e for e in s["errors"])


def test_level_stops_by_itself_when_the_server_hangs():
    level = run_level(hanging_handler, max_seconds=0.3, drain_seconds=0.3, request_timeout=60.0)
    s = level.summary
    assert s["duration_s"] < 3.0
    assert s["sent"] == s["completed"] + s["failed"] == 3  # one per user, then the time limit
    assert s["aborted"] == 3


def test_request_timeout_is_a_failure():
    level = run_level(hanging_handler, num_requests=2, max_seconds=30.0, request_timeout=0.3)
    s = level.summary
    assert s["sent"] == s["failed"] == 2 and s["aborted"] == 0
    assert any("timeout" in e for e in s["errors"])


def test_command_line_rate_sweep_writes_json(tmp_path):
    import threading

    from bench.loadgen import main

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(peer_like_handler(tokens=4), "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = server.sockets[0].getsockname()[1]
        out = tmp_path / "levels.json"
        assert main(["--url", f"http://127.0.0.1:{port}", "--model", "m", "--rate", "20,40",
                     "--requests-per-level", "5", "--max-seconds", "5", "--ignore-eos-body", "{}",
                     "--json", str(out)]) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    levels = json.loads(out.read_text())
    assert [(lv["mode"], lv["value"]) for lv in levels] == [("rate", 20.0), ("rate", 40.0)]
    assert all(lv["summary"]["completed"] == lv["summary"]["sent"] == 5 for lv in levels)
    assert all(len(lv["requests"]) == 5 for lv in levels)


def test_sweep_levels_get_fresh_prompts_and_warm_up_first():
    from bench.loadgen import sweep_concurrency

    seen = []

    async def recording(reader, writer):
        body = await _read_request(reader)
        seen.append(body["messages"][0]["content"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                     b'data: {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}\n\n')
        await writer.drain()
        writer.close()

    prompts = chat_prompts()
    load = LoadConfig(max_tokens=2, num_requests=2, warmup_requests=1)

    async def scenario(target):
        return await sweep_concurrency(target, prompts, [1, 2], load, log=lambda line: None)

    levels = asyncio.run(_with_server(recording, scenario))
    assert [lv.summary["sent"] for lv in levels] == [2, 4]  # at least two requests per user
    texts = [p.messages[0]["content"] for p in prompts]
    assert seen[0] == texts[-1]  # warm-up from the end
    assert sorted(seen[1:]) == sorted(texts[:6])  # levels: prompts 0-1, then 2-5
