"""Headless Chromium for tests that look at a page as a person would.

Playwright for Python (a dev dependency) drives Debian's Chromium, ``/usr/bin/chromium``,
installed from Debian's packages when missing (apt, as root): Playwright's own browser
download is never used. The fixtures in ``tests/conftest.py`` are what tests use::

    def test_something(page: Page) -> None:          # a plain (sync) test function
        page.goto("http://127.0.0.1:8000/")
        expect(page.get_by_role("heading")).to_contain_text("Flotilla")
        screenshot(page, "home")                     # .cache/screenshots/home.png
        screenshot(page, "home", docs=True)          # and docs/images/home.png, if asked

* ``browser`` (session): one Chromium for the whole run, closed at its end.
* ``page`` (function): a page in a new browser context (no cookies, storage or
  credentials shared between tests), closed after the test. A failed test leaves
  ``.cache/screenshots/failed/<test>.png`` behind. Override the ``browser_context_args``
  fixture (a dict of ``Browser.new_context`` arguments: ``base_url``,
  ``http_credentials``, ``viewport``, ...) in a test module or conftest to change how the
  context is made.

The sync Playwright API runs its own event loop, so a browser test is a plain ``def``, not
an ``async def``; and since that loop stays set as the thread's running loop while the
session's browser is up, tests that use ``browser`` or ``page`` are marked ``browser``
and run after all the others (``tests/conftest.py``).

Playwright's waiting (``expect(...)``, ``locator.wait_for()``, actions waiting for their
element) is how a test waits for the page, never a sleep: actions and
``expect`` both wait up to ``DEFAULT_TIMEOUT_MS`` unless given a ``timeout`` (Playwright's
own default for ``expect``, 5 s, is short for a 2-core machine running the whole suite).

``screenshot(page, name)`` saves ``.cache/screenshots/<name>.png``; with ``docs=True`` and
``FLOTILLA_UPDATE_SCREENSHOTS=1`` it also copies it to ``docs/images/<name>.png`` for the
documentation to show (``FLOTILLA_UPDATE_SCREENSHOTS=1 make test PYTEST_ARGS=...``).

Where Chromium cannot be had here the fixtures skip with a one-line reason, except with
CI=true, where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from helpers import apt_install
from playwright.sync_api import Browser, Page, expect, sync_playwright

__all__ = [
    "CHROMIUM",
    "DEFAULT_TIMEOUT_MS",
    "SCREENSHOTS",
    "chromium",
    "chromium_version",
    "launched_browser",
    "screenshot",
]

PROJECT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = PROJECT / ".cache" / "screenshots"
DOC_IMAGES = PROJECT / "docs" / "images"
#: How long Playwright's actions and ``expect`` wait by default, in milliseconds.
DEFAULT_TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Chromium unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Chromium unavailable: {reason}")


def chromium() -> Path:
    """Debian's Chromium, installed first if missing; skips (fails with CI=true) if it
    cannot be."""
    if not CHROMIUM.exists():
        failed = apt_install(["chromium"])
        if failed:
            _unavailable(failed)
        if not CHROMIUM.exists():
            _unavailable(f"installed chromium but found no {CHROMIUM}")
    return CHROMIUM


def chromium_version(executable: Path = CHROMIUM) -> str:
    """``156.0.8078.129``, say: what ``chromium --version`` prints, without the words."""
    out = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    found = re.search(r"\d+(?:\.\d+)+", out)
    return found.group(0) if found else out.strip()


@contextlib.contextmanager
def launched_browser() -> Iterator[Browser]:
    """A headless Chromium driven by Playwright, closed (with Playwright's driver) on exit."""
    executable = chromium()
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        try:
            # Playwright passes --no-sandbox itself (chromium_sandbox=False): Chromium's
            # sandbox refuses to start as root, which the tests are.
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
        except Exception as exc:  # e.g. a Chromium too new or too old for this Playwright
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _unavailable(f"Playwright could not launch {executable}: {first}")
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str, *, docs: bool = False, full_page: bool = False) -> Path:
    """Save what ``page`` shows as ``.cache/screenshots/<name>.png`` and return its path.

    A screenshot the documentation shows (``docs=True``) is copied to
    ``docs/images/<name>.png`` too, only with ``FLOTILLA_UPDATE_SCREENSHOTS=1``: a test run
    never changes the checkout unless asked to.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"screenshot name {name!r} is not a plain file name")
    path = SCREENSHOTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("FLOTILLA_UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / path.name)
    return path
