"""Start an HTTP server as a subprocess, wait until it answers, stop it.

Used for specserve and for the peers alike: each runs on 127.0.0.1 on a free
port, logs to a file, and is stopped (SIGINT, then SIGTERM, then SIGKILL on
its own process group) whatever happens to the benchmark.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerFailed(RuntimeError):
    """The server exited or never became ready; the message ends with its log."""


@dataclass
class ServerProcess:
    """A server subprocess with a readiness probe; use as a context manager."""

    name: str
    command: Sequence[str]
    port: int
    log_path: Path
    ready_path: str = "/v1/models"
    ready_timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None
    ready_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            self.ready_seconds = self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        env = {**os.environ, **self.env}
        # Its own session, so stop() can signal the whole process group.
        self.process = subprocess.Popen(list(self.command), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                                        start_new_session=True)
        log.close()

    def wait_ready(self) -> float:
        """Poll until the ready path answers 200; seconds waited. Raises ServerFailed."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.ready_timeout:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with code {self.process.returncode}"
                                   f" before it was ready:\n{self.log_tail()}")
            if self._answers():
                return time.monotonic() - t0
            time.sleep(0.5)
        raise ServerFailed(f"{self.name} not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.base_url + self.ready_path, timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace: float = 15.0) -> int | None:
        """Interrupt, then terminate, then kill the process group; the exit code."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def specserve_command(model: str | None, port: int, extra_args: Sequence[str] = (),
                      python: str = sys.executable) -> list[str]:
    """`python -m cli serve ...` on 127.0.0.1, with extra flags appended."""
    cmd = [python, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    return cmd + list(extra_args)


def specserve_server(model: str | None, log_dir: Path, extra_args: Sequence[str] = (),
                     name: str = "specserve", threads: int | None = None,
                     ready_timeout: float = 600.0) -> ServerProcess:
    """A specserve subprocess run from this checkout (so `server` imports)."""
    port = free_port()
    args = list(extra_args)
    env = {"PYTHONPATH": _pythonpath_with_repo()}
    if threads is not None:
        args += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    return ServerProcess(name, specserve_command(model, port, args), port,
                         Path(log_dir) / f"{_safe(name)}.log", ready_path="/health",
                         ready_timeout=ready_timeout, env=env, cwd=REPO_ROOT)


def _pythonpath_with_repo() -> str:
    current = os.environ.get("PYTHONPATH")
    return str(REPO_ROOT) + (os.pathsep + current if current else "")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
