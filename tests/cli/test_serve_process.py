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
