"""The SSE parser against the ways real servers split and end their streams."""
from bench.sse import SSEEvent, SSEParser

STREAM = (
    ": keep-alive comment\n"
    "data: {\"a\": 1}\n\n"
    "event: progress\r\n"
    "data: line one\r\n"
    "data: line two\r\n\r\n"
    "data:no-space\n\n"
    "data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", event="progress"),
    SSEEvent("no-space"),
    SSEEvent("[DONE]"),
]


def parse_in_pieces(text: str, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events = []
    for i in range(0, len(text), size):
        events += parser.feed(text[i:i + size])
    return events + parser.close()


def test_whole_stream_at_once():
    assert parse_in_pieces(STREAM, len(STREAM)) == EXPECTED


def test_every_split_size_gives_the_same_events():
    # Size 1 splits every CRLF pair and every "data:" prefix.
    for size in range(1, 12):
        assert parse_in_pieces(STREAM, size) == EXPECTED, size


def test_every_single_cut_point():
    for cut in range(len(STREAM) + 1):
        parser = SSEParser()
        events = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:]) + parser.close()
        assert events == EXPECTED, cut


def test_comments_alone_produce_nothing():
    parser = SSEParser()
    assert parser.feed(": ping\n\n: ping\n\n") == []
    assert parser.close() == []


def test_missing_done_and_missing_final_blank_line():
    # transformers serve sends no [DONE]; a server may also close mid-event.
    parser = SSEParser()
    events = parser.feed('data: {"x": 1}\n\ndata: {"x": 2}')
    assert events == [SSEEvent('{"x": 1}')]
    assert parser.close() == [SSEEvent('{"x": 2}')]


def test_lone_cr_line_endings():
    assert parse_in_pieces("data: a\r\rdata: b\r\r", 1) == [SSEEvent("a"), SSEEvent("b")]


def test_blank_lines_without_data_dispatch_nothing():
    assert parse_in_pieces("\n\n\nevent: x\n\n", 3) == []
