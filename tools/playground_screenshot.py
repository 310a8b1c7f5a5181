"""Screenshot of the playground page answering one prompt (docs/playground.png).

Needs a running server and Debian's chromium with playwright's Python API
(the same setup as tests/e2e/test_playground_browser.py):

    specserve serve --speculative-method ngram --port 8765 &
    python -m tools.playground_screenshot --url http://127.0.0.1:8765 --out docs/playground.png
"""
from __future__ import annotations

import argparse
import shutil

from playwright.sync_api import sync_playwright

CODE_PROMPT = (
    "Rename the function to rectangle_area and its arguments to w and h:\n\n"
    "def area(width, height):\n    \"\"\"The area of a width x height rectangle.\"\"\"\n"
    "    if width < 0 or height < 0:\n        raise ValueError(\"negative size\")\n"
    "    return width * height\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="docs/playground.png")
    parser.add_argument("--prompt", default=CODE_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(600_000)
        page.goto(args.url + "/playground")
        if args.api_key:
            page.fill("#api-key", args.api_key)
            page.click("#save-key")
        page.wait_for_function("document.getElementById('model').options.length > 0")
        page.fill("#max-tokens", str(args.max_tokens))
        page.fill("#prompt", args.prompt)
        page.click("#send")
        page.wait_for_function(
            "/ · (stop|length)$/.test(document.querySelector('.msg.assistant .meta')?.textContent || '')")
        drafted = page.locator(".msg.assistant span.tok[data-drafter]")
        if drafted.count():
            drafted.nth(drafted.count() // 3).hover()  # show one token's tooltip
        page.screenshot(path=args.out, full_page=True)
        print(page.locator(".msg.assistant .meta").inner_text())
        browser.close()


if __name__ == "__main__":
    main()
