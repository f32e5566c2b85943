"""The docs site: generated pages are current, and `make docs`' strict build passes.

mkdocs.yml turns every link, anchor and nav check into a warning and `strict: true` makes
a warning fail the build, so these tests prove the site builds with no warnings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _generated(script: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize(
    ("script", "page"), [("gen_config_docs.py", "configuration.md"), ("gen_api_docs.py", "api.md")]
)
def test_generated_page_is_current(script: str, page: str) -> None:
    assert _generated(script) == (ROOT / "docs" / page).read_text(), "run `make docs`"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it."""
    site = tmp_path_factory.mktemp("site")
    built = _build(ROOT / "mkdocs.yml", site)
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return site


def test_every_page_in_the_nav_is_built(site: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: list[object]) -> list[str]:
        out: list[str] = []
        for entry in nav:
            assert isinstance(entry, dict)
            for value in entry.values():
                out += pages(value) if isinstance(value, list) else [value]
        return out

    sources = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(pages(config["nav"])) == sources
    for page in sources:
        assert (site / page.replace(".md", ".html")).is_file(), page


class _Assets(HTMLParser):
    """What a page loads (scripts, stylesheets, images, frames), not what it links to."""

    LOADED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attribute = self.LOADED.get(tag)
        values = dict(attrs)
        if tag == "link" and values.get("rel") in ("canonical", "next", "prev"):
            return
        if attribute and values.get(attribute):
            self.urls.append(values[attribute] or "")


def test_site_loads_only_its_own_assets(site: Path) -> None:
    loaded: dict[str, list[str]] = {}
    for page in site.rglob("*.html"):
        parser = _Assets()
        parser.feed(page.read_text())
        loaded[page.name] = parser.urls
    for stylesheet in site.rglob("*.css"):
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", stylesheet.read_text())
        loaded[stylesheet.name] = [u for u in urls if not u.startswith("data:")]
    assert loaded["index.html"], "the parser found nothing a page loads"
    remote = {
        name: [u for u in urls if urlsplit(u).scheme or urlsplit(u).netloc]
        for name, urls in loaded.items()
    }
    assert not {name: urls for name, urls in remote.items() if urls}


def test_every_code_fence_is_rendered(site: Path) -> None:
    """Python-Markdown renders a fence it cannot parse (one inside a list item) as inline
    code: each page has at least as many code blocks as its source has fences."""
    short = {}
    for source in (ROOT / "docs").glob("*.md"):
        fences = len(re.findall(r"^\s*```", source.read_text(), flags=re.MULTILINE)) // 2
        blocks = (site / source.name.replace(".md", ".html")).read_text().count("<pre")
        if blocks < fences:
            short[source.name] = (fences, blocks)
    assert not short


@pytest.mark.parametrize(
    ("page", "text", "warning"),
    [
        ("index.md", "[the guide](user-guide.md#no-such-heading)", "no-such-heading"),
        ("index.md", "[a page](no-such-page.md)", "no-such-page.md"),
        ("index.md", "[a page](/hpc.md)", "absolute link"),
        ("stray.md", "# Not in the nav", "stray.md"),
    ],
)
def test_strict_build_fails_on(tmp_path: Path, page: str, text: str, warning: str) -> None:
    """The validation settings are in force: each of these breakages fails the build."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / page).open("a") as f:
        f.write(f"\n{text}\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    built = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert warning in built.stderr
