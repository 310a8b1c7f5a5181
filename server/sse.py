"""Server-Sent Events and client disconnects.

A client that goes away must not keep the engine busy: `run_until_disconnect`
cancels work that is still being awaited before any byte was sent, and
`SSEResponse` stops a stream (and runs its `on_close`, which aborts the
engine requests) as soon as the ASGI server reports the disconnect.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

logger = logging.getLogger(__name__)


class ClientDisconnected(Exception):
    """The HTTP client went away before the response was complete."""


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the ASGI server reports that the client has gone.

    The request body was already read, so the next message the server hands
    out is `http.disconnect`; waiting on it costs nothing and wakes at once.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it and raising ClientDisconnected if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


class SSEResponse(StreamingResponse):
    """A text/event-stream response that stops at once when the client leaves.

    Starlette's StreamingResponse notices a disconnect only on some ASGI
    versions or at the next failed send; a stream that is still queued in
    the engine sends nothing for a while, so we watch `receive` ourselves
    and cancel the event generator, then run `on_close` (which aborts the
    engine requests).
    """

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            sender = asyncio.ensure_future(self._send_events(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sender, watcher):
                    t.cancel()
                results = await asyncio.gather(sender, watcher, return_exceptions=True)
            _raise_unexpected(results[0])
        except OSError:
            logger.debug("client went away during a stream")
        finally:
            await self.body_iterator.aclose()
            await self._on_close()

    async def _send_events(self, send: Any) -> None:
        async for event in self.body_iterator:
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _raise_unexpected(result: Any) -> None:
    # A failed send (OSError) means the client left: not an error of ours.
    if isinstance(result, BaseException) and not isinstance(
            result, (asyncio.CancelledError, OSError)):
        raise result


def sse(payload: dict[str, Any] | str) -> str:
    """One `data:` event; a dict is sent as JSON, a string (`[DONE]`) as is."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"
