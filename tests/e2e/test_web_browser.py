"""Flotilla's web page in headless Chromium (tests/browser.py), against a whole gateway:
a user signs in, creates a cluster from the form, watches it start, opens its dashboard,
scales it, reads its logs and stops it; an admin sees and stops other users' clusters;
a user does not get the admin view. Screenshots go to .cache/screenshots/ (and, with
FLOTILLA_UPDATE_SCREENSHOTS=1, the docs' to docs/images/)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import screenshot
from flotilla import BasicAuth, Gateway
from gateway_stack import Gateway as Stack
from gateway_stack import cluster_pids, running_gateway
from helpers import wait_for
from playwright.sync_api import ConsoleMessage, Page, expect

ADMIN = "ada"
CONFIG = (
    f'c.Auth.admin_users = ["{ADMIN}"]\n'
    "c.Auth.cookie_max_age_seconds = 3600\n"
    'c.Quotas.default = {"max_clusters": 3, "max_cores": 8}\n'
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("web-browser"), CONFIG) as gateway:
        yield gateway


@pytest.fixture
def problems(page: Page) -> Iterator[list[str]]:
    """What the page reported as wrong (script errors, Content-Security-Policy refusals,
    failed loads): each test ends with none."""
    seen: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # The API's refusals the page expects and shows (sign in, a bad value) are not.
        expected = re.search(r"status of (401|422)", message.text)
        if message.type == "error" and not expected:
            seen.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    yield seen
    assert seen == []


def _sign_in(page: Page, stack: Stack, user: str) -> None:
    page.goto(stack.address + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text(re.compile(rf"^Signed in as {re.escape(user)}"))


def _row(page: Page, name: str, table: str = "#cluster-table") -> object:
    return page.locator(f"{table} tr", has=page.get_by_role("rowheader", name=name))


def _worker_process(cluster: str) -> tuple[str, int]:
    """The name and a PID of the one worker of ``cluster`` (its env names it)."""
    for pid in cluster_pids(cluster):
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"DASK_GATEWAY_WORKER_NAME="):
                    return item.split(b"=", 1)[1].decode(), pid
    raise AssertionError(f"no worker process of cluster {cluster}")


def test_a_user_runs_a_cluster_from_the_page(page: Page, stack: Stack, problems: list[str]) -> None:
    _sign_in(page, stack, "mia")
    expect(page.get_by_text("You have no clusters.")).to_be_visible()

    # The form is the options spec; a bad value gets the gateway's message at its field.
    cores = page.get_by_label("Worker cores")
    expect(cores).to_have_value("1")
    expect(page.get_by_label("Profile")).to_have_value("small")
    cores.fill("9")
    page.get_by_role("button", name="Create cluster").click()
    message = page.locator("#option-worker_cores-message")
    expect(message).to_have_text(re.compile(r"^worker_cores must be <= 2"))
    expect(cores).to_have_attribute("aria-invalid", "true")
    screenshot(page, "web-form-error", docs=True)
    cores.fill("2")
    page.get_by_label("Environment").fill("GREETING=hello")
    page.get_by_role("button", name="Create cluster").click()
    expect(message).to_have_text("")

    # It appears, then runs, without a reload.
    row = page.locator("#cluster-rows tr")
    expect(row).to_have_count(1)
    name = row.get_attribute("data-cluster")
    assert name
    status = row.locator("td").nth(0)
    expect(status).to_have_text("RUNNING", timeout=60_000)
    with Gateway(stack.address, auth=BasicAuth("mia")) as gw:
        report = gw.get_cluster(name)
        assert report.options["worker_cores"] == 2
        assert report.options["environment"] == {"GREETING": "hello"}

    # The dashboard, through Envoy.
    dashboard = row.get_by_role("link", name=f"Dashboard of {name}")
    assert dashboard.get_attribute("href") == f"/clusters/{name}/status"
    with page.context.expect_page() as opened:
        dashboard.click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == f"{stack.address}/clusters/{name}/status"
    expect(tab).to_have_title(re.compile("Dask"), timeout=30_000)
    expect(tab.get_by_role("link", name="Workers")).to_be_visible()  # the dashboard's menu
    tab.close()

    # Scale to one worker: the row shows it connected.
    row.get_by_label(f"Workers for {name}").fill("1")
    row.get_by_role("button", name=f"Scale {name}").click()
    expect(row.locator("td").nth(1)).to_have_text("1/1", timeout=120_000)
    screenshot(page, "web-clusters", docs=True)

    # The worker dies (its process group killed): the gateway replaces it, and the logs
    # say first which worker failed and why.
    worker, pid = _worker_process(name)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    with Gateway(stack.address, auth=BasicAuth("mia")) as gw:

        def failed() -> str | None:
            return next(
                (w.reason for w in gw.list_workers(name) if w.name == worker and w.stop_time),
                None,
            )

        reason = wait_for(failed, 60, f"worker {worker} recorded as failed")
    assert "killed by SIGKILL" in reason, reason
    expect(row.locator("td").nth(1)).to_have_text("1/1", timeout=120_000)

    # Logs.
    row.get_by_role("button", name=f"Logs {name}").click()
    logs = page.locator("#logs-text")
    expect(logs).to_contain_text("==> failed workers <==")
    expect(logs).to_contain_text(f"{worker}: {reason}")
    expect(logs).to_contain_text("==> scheduler <==")
    expect(logs).to_contain_text("Scheduler at")
    page.get_by_role("button", name="Close logs").click()
    expect(logs).to_be_hidden()

    # Stop.
    row.get_by_role("button", name=f"Stop {name}").click()
    expect(status).to_have_text("STOPPED", timeout=60_000)
    expect(row.get_by_role("button", name=f"Stop {name}")).to_have_count(0)


def test_signing_in_from_the_keyboard(page: Page, stack: Stack, problems: list[str]) -> None:
    page.goto(stack.address + "/")
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type("kai")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # in the password field: submits the form
    expect(page.locator("#who")).to_have_text("Signed in as kai")
    page.get_by_role("button", name="Sign out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # The cookie is gone: a reload asks again.
    page.reload()
    expect(page.get_by_label("User name")).to_be_visible()


def test_what_a_user_typed_is_shown_as_text(page: Page, stack: Stack) -> None:
    user = '<img src=x onerror="window.pwned=1">'
    _sign_in(page, stack, user)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#who img").count() == 0


def test_an_admin_sees_every_users_clusters_and_stops_one(
    page: Page, stack: Stack, problems: list[str]
) -> None:
    names = {}
    for user in ("mia", "noah"):
        with Gateway(stack.address, auth=BasicAuth(user)) as gw:
            names[user] = gw.submit()
            gw.wait_for_start(names[user])
    _sign_in(page, stack, ADMIN)
    expect(page.get_by_role("heading", name="All users")).to_be_visible()
    for user, name in names.items():
        admin_row = _row(page, name, "#admin-table")
        expect(admin_row).to_contain_text(user)  # type: ignore[attr-defined]
        expect(admin_row).to_contain_text("RUNNING")  # type: ignore[attr-defined]
    usage = page.locator("#usage-rows tr", has=page.get_by_role("rowheader", name="noah"))
    expect(usage.locator("td").nth(0)).to_have_text("1 of 3")  # clusters against the quota
    expect(usage.locator("td").nth(1)).to_have_text("1 of 8")  # cores: its scheduler's
    screenshot(page, "web-admin", docs=True, full_page=True)

    _row(page, names["noah"], "#admin-table").get_by_role(  # type: ignore[attr-defined]
        "button", name=f"Stop {names['noah']}"
    ).click()
    with Gateway(stack.address, auth=BasicAuth("noah")) as gw:
        wait_for(
            lambda: gw.get_cluster(names["noah"]).status.name == "STOPPED",
            60,
            "noah's cluster to stop",
        )
        with Gateway(stack.address, auth=BasicAuth("mia")) as mia:
            assert mia.get_cluster(names["mia"]).status.name == "RUNNING"
            mia.stop_cluster(names["mia"])
    expect(_row(page, names["noah"], "#admin-table")).to_have_count(0)


def test_a_user_gets_no_admin_view(page: Page, stack: Stack, problems: list[str]) -> None:
    _sign_in(page, stack, "noah")
    expect(page.get_by_role("heading", name="My clusters")).to_be_visible()
    expect(page.get_by_role("heading", name="All users")).to_be_hidden()
    # Nor does asking the API for it work, with the page's own session.
    refused = page.request.get(f"{stack.address}/api/v1/usage?all_users=1")
    assert refused.status == 403
    refused = page.request.get(f"{stack.address}/api/v1/clusters/?all_users=1")
    assert refused.status == 403
