"""Where Chromium cannot be had, the browser fixtures skip, or fail with CI=true."""

from __future__ import annotations

from pathlib import Path

import browser
import pytest

# pytest's outcomes: what pytest.skip and pytest.fail raise.
Skipped = pytest.skip.Exception
Failed = pytest.fail.Exception


@pytest.fixture
def no_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    asked: list[list[str]] = []

    def apt_install(packages: list[str]) -> str:
        asked.append(list(packages))
        return "`apt-get install` failed: E: Unable to locate package chromium"

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setattr(browser, "apt_install", apt_install)
    return asked


def test_missing_chromium_is_installed_then_skips(
    no_chromium: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(Skipped, match="Chromium unavailable: `apt-get install` failed"):
        browser.chromium()
    assert no_chromium == [["chromium"]]


def test_missing_chromium_fails_in_ci(
    no_chromium: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="Chromium unavailable in CI"):
        browser.chromium()


def test_an_installed_chromium_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    present = tmp_path / "chromium"
    present.touch()
    monkeypatch.setattr(browser, "CHROMIUM", present)
    monkeypatch.setattr(browser, "apt_install", lambda packages: pytest.fail("apt asked"))
    assert browser.chromium() == present
