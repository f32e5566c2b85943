"""dask-labextension in a real JupyterLab, in a real browser, against Flotilla.

JupyterLab runs from ``.cache/jupyterlab`` (``make test`` builds it: ``jupyterlab``,
``dask-labextension`` and the unmodified ``dask-gateway`` client), configured as
docs/labextension.md says: the extension's cluster factory is ``GatewayCluster`` pointed
at the gateway with basic auth. Chromium (tests/browser.py) opens the Dask sidebar,
presses NEW, opens a dashboard panel and shuts the cluster down, while the test checks each
step against what Flotilla itself reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import screenshot
from gateway_stack import Gateway, running_gateway
from helpers import free_port, wait_for
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.timeout(300)

PROJECT = Path(__file__).resolve().parents[2]
USER = "alice"
START_TIMEOUT = 120.0
CLUSTER_TIMEOUT = 90.0

DOCS = PROJECT / "docs" / "labextension.md"
DOCUMENTED_ADDRESS = "http://127.0.0.1:8000"


def documented_dask_config(address: str) -> str:
    """The dask configuration file of docs/labextension.md, for the gateway at ``address``."""
    (config,) = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert config.count(DOCUMENTED_ADDRESS) == 2, config
    assert f"username: {USER}" in config, config
    return config.replace(DOCUMENTED_ADDRESS, address)


#: Keeps JupyterLab from reaching out (news, update checks, PyPI for extensions).
JUPYTER_CONFIG = """\
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.extension_manager = "readonly"
"""


def jupyterlab_python() -> Path:
    """The interpreter of the JupyterLab virtualenv `make test` builds."""
    python = Path(
        os.environ.get("FLOTILLA_JUPYTERLAB_PYTHON")
        or PROJECT / ".cache" / "jupyterlab" / "bin" / "python"
    )
    if not python.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no JupyterLab virtualenv at {python}; run the tests with `make test`")
        pytest.skip("no JupyterLab virtualenv (run through `make test`)")
    return python


@dataclass
class JupyterLab:
    url: str
    token: str
    log: Path

    def api(self, path: str) -> Any:
        """GET ``path`` of JupyterLab's server with the token; the parsed JSON body."""
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


@contextlib.contextmanager
def running_jupyterlab(python: Path, workdir: Path, gateway_address: str) -> Iterator[JupyterLab]:
    """JupyterLab on a free loopback port with a token, every directory of its own under
    ``workdir``; stopped by PID on exit."""
    dirs = {name: workdir / name for name in ("root", "config", "data", "runtime", "dask")}
    for path in dirs.values():
        path.mkdir(parents=True)
    (dirs["dask"] / "flotilla.yaml").write_text(documented_dask_config(gateway_address))
    (dirs["config"] / "jupyter_server_config.py").write_text(JUPYTER_CONFIG)
    # Nor ask whether to fetch the news, in a toast over the screenshots.
    notification = dirs["config"] / "lab/user-settings/@jupyterlab/apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "JUPYTER", "FLOTILLA"))
    }
    env.update(
        DASK_CONFIG=str(dirs["dask"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
    )
    port, token = free_port(), secrets.token_hex(16)
    log = workdir / "jupyterlab.log"
    argv = [
        str(python), "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={dirs['root']}",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    lab = JupyterLab(f"http://127.0.0.1:{port}", token, log)
    try:

        def ready() -> str | None:
            if proc.poll() is not None:
                return "exited"
            return "ready" if "started" in lab.api("/api/status") else None

        try:
            state = wait_for(ready, START_TIMEOUT, "JupyterLab to answer /api/status", 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_tail(log)}") from None
        if state == "exited":
            raise AssertionError(f"JupyterLab exited {proc.returncode}:\n{_tail(log)}")
        yield lab
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        print(f"==== {log}\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:] if log.exists() else ""


def _clusters(gateway: Gateway, status: str = "") -> dict[str, Any]:
    query = f"?status={status}" if status else ""
    code, _, body = gateway.request("GET", f"/api/v1/clusters/{query}", USER)
    assert code == 200, body
    return dict(body)


def _fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return int(resp.status)


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    # Room for the sidebar's cluster card below its list of dashboard panels.
    return {"viewport": {"width": 1400, "height": 1000}}


def _widen_left_sidebar(page: Page, width: int) -> None:
    """Drag the handle between JupyterLab's left sidebar and its main area to ``width``."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    assert box is not None, "no handle to drag"
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(width, y, steps=5)
    page.mouse.up()


def test_new_dashboard_and_shutdown_from_the_sidebar(page: Page, tmp_path: Path) -> None:
    python = jupyterlab_python()
    (tmp_path / "gateway").mkdir()
    with running_gateway(tmp_path / "gateway") as gateway, contextlib.ExitStack() as lab_exit:
        lab = lab_exit.enter_context(running_jupyterlab(python, tmp_path / "lab", gateway.address))
        page.goto(f"{lab.url}/lab?token={lab.token}")
        sidebar_tab = page.locator('li[data-id="dask-dashboard-launcher"]')
        sidebar_tab.click(timeout=START_TIMEOUT * 1000)
        sidebar = page.locator(".dask-DaskSidebar")
        expect(sidebar).to_be_visible()
        _widen_left_sidebar(page, 700)
        new = sidebar.get_by_role("button", name="NEW")
        expect(new).to_be_enabled()
        screenshot(page, "labextension-sidebar")
        assert _clusters(gateway) == {}

        # NEW: the extension's GatewayCluster asks Flotilla for a cluster as USER.
        new.click()
        name = wait_for(
            lambda: next(
                (n for n, c in _clusters(gateway).items() if c["status"] == "RUNNING"), None
            ),
            CLUSTER_TIMEOUT,
            f"{USER}'s cluster to run",
        )
        card = sidebar.locator(".dask-ClusterListingItem")
        expect(card).to_have_count(1, timeout=CLUSTER_TIMEOUT * 1000)
        expect(card).to_contain_text("GatewayCluster 1")
        expect(card).to_contain_text(name)
        dashboard = f"{gateway.address}/clusters/{name}/status"
        expect(card.get_by_role("link", name=dashboard)).to_have_attribute("href", dashboard)
        assert [c["dashboard_link"] for c in lab.api("/dask/clusters")] == [dashboard]
        screenshot(page, "labextension-new-cluster", docs=True)

        # The sidebar's dashboard panels come from that dashboard, through Envoy. On its own
        # the sidebar points them at JupyterLab's proxy of the dashboard's host and port
        # (dask/dashboard/<id>), which drops the /clusters/<name>/ path every gateway serves
        # dashboards under; so, as a user does, paste the cluster's dashboard link instead.
        url_box = sidebar.get_by_role("textbox", name="DASK DASHBOARD URL")
        expect(url_box).to_have_value(re.compile(r"^dask/dashboard/[0-9a-f-]+$"))
        url_box.fill(dashboard)
        url_box.press("Enter")
        task_stream = sidebar.locator(".dask-DashboardListing-item").get_by_role(
            "button", name="Task Stream", exact=True
        )
        expect(task_stream).to_be_enabled()
        screenshot(page, "labextension-dashboard-panels")
        task_stream.click()
        frame = page.locator(".dask-DaskDashboard-widget iframe")
        expect(frame).to_have_count(1)
        src = frame.get_attribute("src")
        assert src is not None and src.startswith(f"{gateway.address}/clusters/{name}/"), src
        assert _fetch(src) == 200
        expect(
            page.frame_locator(".dask-DaskDashboard-widget iframe").locator(".bk-Canvas, canvas")
        ).not_to_have_count(0)
        screenshot(page, "labextension-task-stream", docs=True)

        # SHUTDOWN: the extension closes its GatewayCluster, which stops it in Flotilla.
        card.get_by_role("button", name="SHUTDOWN").click()
        expect(card).to_have_count(0, timeout=CLUSTER_TIMEOUT * 1000)
        wait_for(
            lambda: name in _clusters(gateway, "STOPPED"),
            CLUSTER_TIMEOUT,
            f"{name} to be STOPPED",
        )
        assert _clusters(gateway) == {}
        screenshot(page, "labextension-stopped")

        # A cluster still listed when JupyterLab stops keeps running (the extension's
        # GatewayClusters are asynchronous: nothing closes them at exit), as the docs say.
        new.click()
        second = wait_for(
            lambda: next(iter(_clusters(gateway)), None), CLUSTER_TIMEOUT, "a second cluster"
        )
        expect(card).to_have_count(1, timeout=CLUSTER_TIMEOUT * 1000)
        lab_exit.close()
        assert _clusters(gateway)[second]["status"] == "RUNNING"
