"""Fixtures every test tier may use."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import DEFAULT_TIMEOUT_MS, SCREENSHOTS, launched_browser
from k8s_cluster import KubeControlPlane, kube_control_plane
from krb5_realm import Krb5Realm, krb5_realm
from playwright.sync_api import Browser, Page
from postgres import PostgresServer, postgres_server
from yarn_cluster import YarnCluster, yarn_cluster

# The Envoy `make setup` installs, unless FLOTILLA_ENVOY names another (`make test` sets
# it; this serves a bare `pytest`).
_ENVOY = (
    Path(__file__).resolve().parents[1]
    / ".cache/envoy/lib/python3.11/site-packages/envoy/_bin/envoy"
)
if not os.environ.get("FLOTILLA_ENVOY") and _ENVOY.exists():
    os.environ["FLOTILLA_ENVOY"] = str(_ENVOY)

# A private Slurm and its users (tests/slurm_fixtures.py), started once per session by
# whichever tier asks first; the test-only Kubernetes node agent (tests/k8s_node_fixture.py).
pytest_plugins = ["slurm_fixtures", "k8s_node_fixture"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run; ``postgres.new_database()`` per test."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def kdc() -> Iterator[Krb5Realm]:
    """One private Kerberos KDC for the whole run (tests/krb5_realm.py), stopped by PID."""
    with krb5_realm() as realm:
        yield realm


@pytest.fixture(scope="session")
def yarn() -> Iterator[YarnCluster]:
    """One private single-node YARN for the whole run (tests/yarn_cluster.py), stopped by
    PID. Hadoop's jars are resolved once into .cache/yarn/."""
    with yarn_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeControlPlane]:
    """One private Kubernetes control plane for the whole run (tests/k8s_cluster.py): real
    etcd, kube-apiserver, kube-controller-manager and kube-scheduler, stopped by PID."""
    with kube_control_plane() as plane:
        yield plane


@pytest.fixture
def kube_namespace(kube: KubeControlPlane) -> Iterator[str]:
    """A fresh namespace of ``kube`` for one test, deleted after it."""
    name = kube.create_namespace("t")
    yield name
    kube.client().delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Debian Chromium for the whole run (tests/browser.py), closed at its end."""
    with launched_browser() as chromium:
        yield chromium


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    """``Browser.new_context`` arguments for ``page``; override it in a module or conftest
    for a ``base_url``, ``http_credentials``, another ``viewport``, ..."""
    return {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def page(
    browser: Browser, browser_context_args: dict[str, Any], request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page in a browser context of its own (nothing shared with other tests), closed
    after the test; when the test failed, what the page showed is saved in
    ``.cache/screenshots/failed/<test>.png``."""
    context = browser.new_context(**browser_context_args)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        page = context.new_page()
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed and not page.is_closed():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            (SCREENSHOTS / "failed").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "failed" / f"{name}.png"))
    finally:
        context.close()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marker added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Browser tests are marked, and run after every other test (in their own order). Between
    # its calls the sync Playwright API leaves its event loop set as this thread's running
    # loop, so once the session's browser is up, any later asyncio.run() or async test
    # fails ("Cannot run the event loop while another loop is running").
    uses_browser = [bool({"browser", "page"} & set(getattr(i, "fixturenames", ()))) for i in items]
    for item, browser in zip(items, uses_browser, strict=True):
        if browser:
            item.add_marker(pytest.mark.browser)
    items[:] = [i for i, b in zip(items, uses_browser, strict=True) if not b] + [
        i for i, b in zip(items, uses_browser, strict=True) if b
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Each phase's report on the test item (``rep_setup``, ``rep_call``), for fixtures'
    # teardown to see whether the test failed (``page`` saves a screenshot then).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
