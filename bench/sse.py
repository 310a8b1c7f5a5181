"""A small incremental parser for Server-Sent Events (text/event-stream).

Written for benchmarking, so it is deliberately lenient: servers split events
across network chunks anywhere (even inside a line or a `\\r\\n` pair), send
comment lines (`: ping`), omit the final `data: [DONE]`, or close the stream
without a trailing blank line. Each of those must still yield every event.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its `data` lines joined by newlines."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed decoded text in arbitrary pieces; get complete events back.

    Follows the WHATWG rules that matter for LLM streams: lines end in LF, CR
    or CRLF; a blank line dispatches; `data` lines accumulate; lines starting
    with ':' are comments; a single space after the colon is dropped.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, text: str) -> list[SSEEvent]:
        """Parse `text` appended to what came before; return finished events."""
        self._buffer += text
        events: list[SSEEvent] = []
        for line in self._pop_complete_lines():
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch what a missing final blank line left pending."""
        events = self.feed("\n") if self._buffer else []
        if self._data:
            events.append(self._dispatch())
        return events

    def _pop_complete_lines(self) -> list[str]:
        # A trailing CR may be the first half of CRLF: keep it for the next piece.
        buf = self._buffer
        cut = len(buf) - 1 if buf.endswith("\r") else len(buf)
        head, tail = buf[:cut], buf[cut:]
        lines = head.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop() + tail  # the unterminated rest
        return lines

    def _process_line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch() if self._data else self._reset()
        if line.startswith(":"):
            return None  # comment / keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        return None  # `retry` and unknown fields are ignored

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id)
        self._reset()
        return event

    def _reset(self) -> None:
        self._data, self._event = [], ""
        return None
