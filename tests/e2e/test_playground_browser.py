"""The playground page in a real headless browser.

Debian's chromium (`apt-get install chromium`) driven by playwright's Python
API (`pip install playwright`, never `playwright install`: we point it at
the system binary). A real uvicorn server with a tiny random model and
n-gram speculation, behind an API key: the page loads without the key and
says a 401 clearly, takes the key, streams an answer whose tokens are
coloured by at least two sources, and draws the per-step chart. Skipped,
with the reason, when chromium or playwright is missing.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.server.conftest import real_engine_client
from tests.server.helpers import live_server

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")

API_KEY = "playground-test-key"
PROMPT = "a b c d a b c d a b c d a b c d a b c d a b c d"
TIMEOUT_MS = 120_000  # a shared 2-core machine: generous, the test waits on events


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(real_engine_client(tmp_path_factory), api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI and this VM run as root, where chromium's sandbox refuses to start.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def use_key(page, key):
    page.fill("#api-key", key)
    page.click("#save-key")


def test_without_a_key_the_page_says_so(server, page):
    page.goto(server.url + "/")
    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert "401" in notice.inner_text() and "API key" in notice.inner_text()
    use_key(page, "wrong-key")
    page.wait_for_function("document.getElementById('notice').textContent.includes('refused')")


def test_streams_coloured_tokens_and_draws_the_chart(server, page, tmp_path):
    page.goto(server.url + "/playground")
    page.locator("#notice").wait_for(state="visible")
    use_key(page, API_KEY)
    page.wait_for_function("document.getElementById('model').options.length > 0")
    assert page.locator("#notice").is_hidden()
    page.fill("#max-tokens", "64")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    # The reply is done when its summary names the finish reason.
    meta = page.locator(".msg.assistant .meta")
    page.wait_for_function(
        "/ · (stop|length)$/.test(document.querySelector('.msg.assistant .meta')?.textContent || '')")
    spans = page.locator(".msg.assistant .body span.tok")
    sources = set(spans.evaluate_all("els => els.map(e => e.dataset.source)"))
    assert len(sources) >= 2 and sources <= {"accepted", "corrected", "bonus", "plain"}, sources
    drafted = page.locator(".msg.assistant span.tok[data-drafter='ngram']")
    assert drafted.count() > 0
    drafted.first.hover()
    assert "drafted by ngram" in page.locator("#tip").inner_text()
    text = page.locator(".msg.assistant .body").inner_text()
    assert text.strip()
    assert int(meta.inner_text().split()[0]) >= spans.count()  # "N tokens: ..."
    chart = page.locator("#chart")
    assert int(chart.get_attribute("data-steps")) > 0
    assert page.evaluate(_CHART_HAS_BARS), "the chart drew no bars"
    assert "steps" in page.locator("#stats").inner_text()
    shot = Path(os.environ.get("PLAYGROUND_SCREENSHOT", tmp_path / "playground.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_the_key_is_remembered(server, page):
    page.goto(server.url + "/")
    use_key(page, API_KEY)
    page.wait_for_function("document.getElementById('model').options.length > 0")
    page.reload()
    page.wait_for_function("document.getElementById('model').options.length > 0")
    assert page.locator("#notice").is_hidden()
    assert page.input_value("#api-key") == API_KEY


# Counts pixels in the accepted-bar colour (or the verified grey) on the canvas.
_CHART_HAS_BARS = """() => {
  const c = document.getElementById('chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let bars = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
    if ((r === 0x2e && g === 0x9d && b === 0x4f) || (r === 0xcf && g === 0xd3 && b === 0xd8)) bars++;
  }
  return bars > 20;
}"""
