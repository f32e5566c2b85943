"""The browser fixtures (tests/browser.py) drive Debian's Chromium: pages load and run
their scripts, contexts share nothing, screenshots land where they should."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import browser as browser_module
import pytest
from browser import chromium_version, screenshot
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PAGE = b"""<!doctype html>
<title>fixture</title>
<h1 id="heading">waiting</h1>
<script>
  document.cookie = "seen=1; path=/";
  setTimeout(() => { document.getElementById("heading").textContent = "ready"; }, 200);
</script>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_playwright_drives_the_debian_chromium(browser: Browser) -> None:
    # The same browser build Playwright reports as the one `chromium --version` names.
    assert browser.version.split(".")[0] == chromium_version().split(".")[0]


def test_page_runs_scripts_and_saves_screenshots(
    page: Page, site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page.goto(site)
    expect(page.locator("#heading")).to_have_text("ready")
    assert [c["name"] for c in page.context.cookies()] == ["seen"]

    monkeypatch.setattr(browser_module, "SCREENSHOTS", tmp_path / "shots")
    monkeypatch.setattr(browser_module, "DOC_IMAGES", tmp_path / "images")
    monkeypatch.delenv("FLOTILLA_UPDATE_SCREENSHOTS", raising=False)
    saved = screenshot(page, "fixture-page", docs=True)
    assert saved == tmp_path / "shots" / "fixture-page.png"
    assert saved.read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "images").exists()
    monkeypatch.setenv("FLOTILLA_UPDATE_SCREENSHOTS", "1")
    screenshot(page, "not-for-docs")
    assert not (tmp_path / "images").exists()
    screenshot(page, "fixture-page", docs=True)
    assert (tmp_path / "images" / "fixture-page.png").read_bytes() == saved.read_bytes()
    with pytest.raises(ValueError):
        screenshot(page, "../escape")


def test_each_page_has_a_context_of_its_own(browser: Browser, page: Page, site: str) -> None:
    other = browser.new_context()
    try:
        other.new_page().goto(site)
        assert other.cookies()
    finally:
        other.close()
    assert page.context.cookies() == []
