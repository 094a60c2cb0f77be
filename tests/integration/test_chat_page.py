"""The chat page at `/`: self-contained HTML, and (with Playwright + Chromium) send, stream, stop, reset."""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.integration.live_server import live_server, make_scheduler, wait_until  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    "the browser test needs Playwright and Chromium: pip install playwright, and Debian's "
    "chromium package (apt install chromium; used via executablePath=/usr/bin/chromium) or "
    "`playwright install chromium`"
)


@pytest.fixture(scope="module")
def page_server(tiny_model_dir):
    """A slowed-down server (30 ms a token, no early stop) so a reply can be stopped mid-way."""
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=2, delay_s=0.03, visible_only=True)
    with live_server(scheduler, tokenizer, api_key="page-key") as srv:
        yield srv


def test_the_page_is_one_self_contained_document(page_server):
    response = httpx.get(page_server.url + "/", timeout=10)  # public: no key needed
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    # no other site may frame it
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    html = response.text
    for element in ('id="input"', 'id="send"', 'id="stop"', 'id="reset"', 'id="messages"'):
        assert element in html
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html), "external asset"
    assert "http://" not in html and "https://" not in html
    assert "innerHTML" not in html  # model text is inserted as text, never as markup


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser_missing() -> None:
    """Skip, or fail where CI promised a browser (.ci/run sets POCKETLM_REQUIRE_BROWSER=1)."""
    if os.environ.get("POCKETLM_REQUIRE_BROWSER") == "1":
        pytest.fail("POCKETLM_REQUIRE_BROWSER=1 but " + INSTALL_HINT)
    pytest.skip(INSTALL_HINT)


def test_send_stream_stop_and_reset_in_headless_chromium(page_server):
    try:
        from playwright import sync_api
    except ImportError:
        _browser_missing()
    executable = _chromium()
    if executable is None:
        _browser_missing()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(page_server.url + "/")
            page.fill("#key", "page-key")
            page.dispatch_event("#key", "change")
            page.fill("#max-tokens", "8")
            page.fill("#temperature", "0")

            page.fill("#input", "Hello there")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-done]", timeout=20_000)
            reply = page.inner_text(".msg.assistant")
            assert reply.strip(), "no text streamed into the page"
            assert page.locator(".msg.error").count() == 0

            page.fill("#max-tokens", "1000")
            page.fill("#input", "Tell me a long story")
            page.click("#send")
            page.wait_for_function(
                "document.querySelectorAll('.msg.assistant')[1]?.textContent.length > 0",
                timeout=20_000,
            )
            page.click("#stop")
            page.locator(".msg.assistant").nth(1).and_(page.locator("[data-done]")).wait_for(
                timeout=5_000
            )
            # the tiny model's 32-token context cannot hold the whole chat: the page left the
            # oldest turn out and said so, instead of failing with "reduce the length"
            assert "left the context window" in page.inner_text(".msg.system")
            assert page.locator(".msg.error").count() == 0
            health = lambda: httpx.get(page_server.url + "/health", timeout=5).json()  # noqa: E731
            assert wait_until(lambda: health()["active"] == 0, timeout_s=2.0)

            page.click("#reset")
            assert page.locator(".msg.user").count() == 0
            assert page.locator(".msg.assistant").count() == 0
        finally:
            browser.close()
