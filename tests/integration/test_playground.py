"""The playground page in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, Stack

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("TEXTGEN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        message = f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set TEXTGEN_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def test_the_page_and_its_assets_are_served(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "playground.js" in page.text
    assert httpx.get(f"{stack.url}/static/playground.css").headers["content-type"].startswith("text/css")
    assert httpx.get(f"{stack.url}/static/../main.py").status_code == 404
    assert httpx.get(f"{stack.url}/static/nothing.js").json()["error"]["code"] == "file_not_found"


def test_prompt_streams_into_the_page(stack: Stack, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url)
    page.fill("#api-key", KEY_A)
    page.click("#key-form button")
    page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=30_000)
    page.fill("#max_tokens", "24")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    # Record every length the reply passes through, to see it grow while streaming.
    page.evaluate("""() => {
        window.lengths = [];
        window.badges = [];
        new MutationObserver(() => {
            const el = document.querySelector('.msg.assistant');
            if (el) window.lengths.push(el.textContent.length);
            const badge = document.querySelector('#jobs li');
            if (el && el.textContent.length && el.dataset.done !== 'true' && badge) {
                window.badges.push(badge.dataset.status);
            }
        }).observe(document.querySelector('#transcript'), {subtree: true, childList: true, characterData: true});
    }""")
    # Hold the page's job polls until the reply is done: the badge must follow the stream itself.
    held: list[Any] = []
    job_poll = re.compile(r".*/v1/jobs/job_[0-9a-f]+$")
    page.route(job_poll, lambda route: held.append(route))
    page.fill("#prompt", "Name three colours of the rainbow.")
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=240_000)
    assert held, "the page polled its job while the reply streamed"
    page.unroute(job_poll)  # lets the held polls through
    reply = page.text_content(".msg.assistant") or ""
    lengths = [n for n in page.evaluate("window.lengths") if n > 0]
    print(f"reply ({len(set(lengths))} visible updates): {reply!r}")
    assert reply.strip()
    assert len(set(lengths)) >= 2, "the reply appeared piece by piece"
    badges = set(page.evaluate("window.badges"))
    assert badges and "queued" not in badges, f"the job's badge while its text streamed: {badges}"
    assert page.text_content("#notice", timeout=5_000).startswith("Done")  # type: ignore[union-attr]
    # The job shows up in the recent-jobs panel and reaches succeeded.
    page.wait_for_selector("#jobs li[data-status=succeeded]", timeout=30_000)
    assert page.evaluate("localStorage.getItem('textgen.apiKey')") == KEY_A
    page.screenshot(path=str(ARTIFACTS / "playground-desktop.png"), full_page=True)
    # Phone width: everything fits without sideways scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
    assert not errors, errors
    context.close()


def test_the_api_docs_render_with_no_network(stack: Stack, browser: Any) -> None:
    """Every request the page makes outside the stack is refused, as on an air-gapped machine;
    the docs must still list the operations, and must not even have tried to reach elsewhere."""
    context = browser.new_context()
    page = context.new_page()
    local, external = [], []

    def only_the_stack(route: Any) -> None:
        url = route.request.url
        if url.startswith(stack.url):
            local.append(url)
            route.continue_()
        else:
            external.append(url)
            route.abort("internetdisconnected")

    page.route("**/*", only_the_stack)
    page.goto(stack.url + "/docs")
    page.wait_for_selector(".opblock", timeout=60_000)
    operations = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.textContent.replace(/\\u200b/g, ''))")
    assert "/v1/jobs" in operations and "/v1/chat/completions" in operations, operations
    assert not external, external
    assert any("/openapi.json" in url for url in local)
    context.close()


def test_the_favicon_and_doc_assets_are_served(stack: Stack) -> None:
    icon = httpx.get(f"{stack.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO header
    css = httpx.get(f"{stack.url}/docs/assets/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{stack.url}/docs/assets/other.js").json()["error"]["code"] == "file_not_found"
    assert httpx.get(f"{stack.url}/redoc").status_code == 404  # not served: its page needs a CDN
