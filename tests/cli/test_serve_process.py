"""`specserve serve` as a real process on a tiny random model: it boots,
becomes ready on /health, serves the openai client, honours
SPECSERVE_API_KEY, and exits cleanly on SIGINT."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.tiny_model import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    port = _free_port()
    env = {**os.environ, "SPECSERVE_API_KEY": "k3y", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--threads", "1", "--max-model-len", "256",
         "--served-model-name", "tiny", "--speculative-method", "ngram",
         "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(proc, url, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"specserve exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("specserve did not become ready")


def test_serves_openai_client_with_key(served):
    _, url = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert 0 < r.usage.completion_tokens <= 5
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert "specserve:num_requests_running" in httpx.get(url + "/metrics").text


def test_exits_cleanly_on_sigint(served):
    proc, _ = served
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


# Runs `specserve serve` with LLMEngine.step patched to raise once a request
# with the poison seed is in the engine: an error no request explains.
_DYING_SERVER = """
import sys
from engine.engine import LLMEngine
from cli.main import main

step = LLMEngine.step

def dying_step(self):
    if any(r.sampling_params.seed == 424242 for r in self.requests.values()):
        raise RuntimeError("injected engine fault")
    return step(self)

LLMEngine.step = dying_step
sys.exit(main(sys.argv[1:]))
"""


def test_exits_1_soon_after_the_engine_dies(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-dying"))
    port = _free_port()
    log = open(tmp_path_factory.mktemp("logs") / "serve.log", "w+")  # a pipe could fill up
    proc = subprocess.Popen(
        [sys.executable, "-c", _DYING_SERVER, "serve", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--threads", "1", "--max-model-len", "256",
         "--log-level", "warning"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        failed_at = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=body | {"seed": 424242}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert proc.wait(timeout=30) == 1
        assert time.monotonic() - failed_at < 15
        log.seek(0)
        assert "engine died" in log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
