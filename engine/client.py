"""The asyncio handle the server uses: submit, stream, abort.

The engine runs in one background thread (torch releases the GIL during
compute). Commands reach it through a thread-safe queue; outputs come back
to each request's asyncio.Queue via `loop.call_soon_threadsafe`. All engine
state is touched only by that thread.

Failures: a request the engine failed (engine/isolation.py) gets a
RequestFailedError and the others go on. An exception that escapes a step
means the engine cannot go on: every request in flight gets EngineDeadError
(a 503), `is_healthy` turns false for good, and the server exits so that a
supervisor restarts it (server/app.py watches `is_healthy`).

Admission is counted on live state: at most `max_num_seqs + max_waiting`
requests in flight (submitted and not yet finished), a count kept under a
lock as requests come and go, never a snapshot from the last step.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.outputs import (
    EngineDeadError,
    EngineStats,
    QueueFullError,
    RequestFailedError,
    RequestOutput,
)
from engine.structured.grammar import compiler_for
from scheduler.request import SamplingParams, StructuredOutput

log = logging.getLogger("specserve.client")


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sink: "_Sink"


@dataclass
class _Abort:
    request_id: str


class _Sink:
    """Delivers outputs (or an exception) from the engine thread to asyncio."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more


class AsyncEngineClient:
    """Async front of an LLMEngine running in a background thread.

    Implements `engine.interface.EngineClient`, the surface the server uses.
    """

    def __init__(self, engine: LLMEngine, served_model_name: str | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = served_model_name or _default_name(engine)
        self.max_model_len = engine.max_model_len
        # Ids must index the model's embedding and be decodable by the tokenizer.
        self.vocab_size = min(engine.model_config.vocab_size, engine.tokenizer.vocab_size)
        self.kv_cache_tokens = engine.config.cache.num_tokens
        self.device = engine.config.device
        self.max_waiting = engine.config.scheduler.max_waiting
        # The batch takes max_num_seqs; beyond it max_waiting may queue.
        self.capacity = engine.config.scheduler.max_num_seqs + self.max_waiting
        self._commands: queue.Queue = queue.Queue()
        self._sinks: dict[str, _Sink] = {}
        self._in_flight = 0  # submitted, not yet finished (for admission control)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dead: BaseException | None = None
        self._stats = EngineStats()

    async def prepare_grammar(self, spec: StructuredOutput) -> None:
        """Compile a response_format's grammar off the event loop, so a bad
        schema is a 400 before the request is queued and the engine thread
        finds it compiled. Raises UnsupportedSchema."""
        compiler = compiler_for(self.tokenizer, self.engine.model_config.vocab_size)
        await asyncio.to_thread(compiler.compile, spec)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngineClient":
        return cls(LLMEngine(config), config.served_model_name)

    # ---- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="specserve-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        self._stopping.set()
        self._commands.put(None)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
            self._thread = None

    @property
    def is_healthy(self) -> bool:
        return self._dead is None and self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return self._stats

    # ---- requests ----------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Stream RequestOutputs; leaving early aborts the request.

        The prompt is not validated here: the server checks it against
        `max_model_len`, `vocab_size` and `kv_cache_tokens` on the way in.
        """
        self._check_alive()
        sink = self._admit(request_id)
        self._commands.put(_Add(request_id, list(prompt_token_ids), params, sink))
        finished = False
        try:
            while not finished:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._release(request_id)
            if not finished:
                self._commands.put(_Abort(request_id))

    async def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self._dead!r}")
        if self._thread is None:
            raise EngineDeadError("the engine is not running")

    def check_capacity(self, num_requests: int) -> None:
        with self._lock:
            self._check_room(num_requests)

    def _check_room(self, num_requests: int) -> None:
        if self._in_flight + num_requests > self.capacity:
            raise QueueFullError(
                f"{self._in_flight} requests are in flight; the batch and the waiting queue "
                f"hold {self.capacity}")

    def _admit(self, request_id: str) -> _Sink:
        with self._lock:
            self._check_room(1)
            if request_id in self._sinks:
                raise ValueError(f"duplicate request id {request_id!r}")
            sink = _Sink(asyncio.get_running_loop())
            self._sinks[request_id] = sink
            self._in_flight += 1
            return sink

    def _release(self, request_id: str) -> None:
        with self._lock:
            if self._sinks.pop(request_id, None) is not None:
                self._in_flight -= 1

    # ---- the engine thread -------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._drain_commands(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._deliver(self.engine.step())
                self._report_failures()
                self._stats = self.engine.snapshot_stats()
        except BaseException as exc:  # noqa: BLE001 - the loop must report any crash
            log.critical("engine loop crashed; failing every request in flight", exc_info=exc)
            self._dead = exc
            self._fail_all(EngineDeadError(f"the engine stopped after an error: {exc!r}"))

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command) -> None:
        if isinstance(command, _Abort):
            self.engine.abort_request(command.request_id)
            return
        try:
            self.engine.add_request(command.request_id, command.prompt_token_ids, command.params)
        except ValueError as exc:  # the engine's verdict on a bad request: a 400
            command.sink.put(exc)
        except Exception as exc:  # noqa: BLE001 - fails this request, not the engine
            log.error("adding request %s failed", command.request_id, exc_info=exc)
            command.sink.put(RequestFailedError(command.request_id, "add", exc))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is not None:
                sink.put(out)

    def _report_failures(self) -> None:
        for failure in self.engine.take_failures():
            sink = self._sinks.get(failure.request_id)
            if sink is not None:
                sink.put(failure.as_error())

    def _fail_all(self, exc: BaseException) -> None:
        for sink in list(self._sinks.values()):
            sink.put(exc)


def _default_name(engine: LLMEngine) -> str:
    """The model's file or directory name, without '.gguf' and quantisation."""
    from engine.models.default import default_model_path

    path = engine.config.model or default_model_path()
    name = os.path.basename(os.path.normpath(path))
    if name.endswith(".gguf"):
        name = name.removesuffix(".gguf").split(".Q")[0]
    return name
