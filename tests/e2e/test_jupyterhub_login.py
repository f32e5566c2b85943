"""JupyterHub login end to end: the unmodified dask-gateway client (``auth="jupyterhub"``,
the token from ``JUPYTERHUB_API_TOKEN`` as in a notebook server) through Envoy and auth,
against a real hub with the gateway registered as a hub service; and a person signing in
to the web page, in headless Chromium, through the hub's OAuth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_stack import Gateway, cluster_pids, running_gateway, upstream_python
from helpers import wait_for
from jupyterhub_hub import JupyterHub, jupyterhub_hub
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.timeout(240)

CLIENT = textwrap.dedent(
    """
    import json, sys
    from dask_gateway import Gateway

    with Gateway(sys.argv[1], auth="jupyterhub") as gw:
        before = [c.name for c in gw.list_clusters()]
        cluster = gw.new_cluster()
        listed = [(c.name, c.status.name) for c in gw.list_clusters()]
        cluster.shutdown()
        after = [c.name for c in gw.list_clusters()]
        print(json.dumps(
            {"before": before, "name": cluster.name, "listed": listed, "after": after}
        ))
    """
)


@pytest.fixture()
def hub() -> Iterator[JupyterHub]:
    with jupyterhub_hub() as running:
        running.create_user("alice", groups=("dask-users",))
        running.create_user("bob", groups=("gateway-admins",))
        yield running


def hub_config(hub: JupyterHub, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        c.Auth.authenticator_class = "jupyterhub"
        c.Auth.admin_groups = ["gateway-admins"]
        c.JupyterHubAuthenticator.jupyterhub_api_url = {hub.api_url!r}
        c.JupyterHubAuthenticator.jupyterhub_api_token = {hub.service_token!r}
        """
    ) + textwrap.dedent(extra)


@pytest.fixture()
def gateway(hub: JupyterHub, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path, hub_config(hub)) as running:
        yield running


def whoami(gateway: Gateway, token: str) -> tuple[int, object]:
    status, _, body = gateway.request(
        "GET", "/api/v1/login", user=None, headers={"Authorization": f"jupyterhub {token}"}
    )
    return status, body


def test_upstream_client_logs_in_with_a_hub_token(
    hub: JupyterHub, gateway: Gateway, tmp_path: Path
) -> None:
    python = upstream_python()
    token = hub.user_token("alice")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    done = subprocess.run(
        [python, "-c", CLIENT, gateway.address],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "JUPYTERHUB_API_TOKEN": token},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] == []
    assert result["listed"] == [[result["name"], "RUNNING"]]
    assert result["after"] == []
    assert cluster_pids(result["name"]) == []
    # The cluster was alice's: the hub's name, not one the client chose.
    auth_log = (tmp_path / "logs" / "auth.log").read_text(errors="replace")
    assert "user alice authenticated" in auth_log, auth_log[-3000:]

    assert whoami(gateway, token) == (
        200,
        {"user": "alice", "groups": ["dask-users"], "admin": False},
    )
    assert whoami(gateway, hub.user_token("bob")) == (
        200,
        {"user": "bob", "groups": ["gateway-admins"], "admin": True},
    )
    assert whoami(gateway, "not-a-token") == (401, {"error": "Authentication required"})

    fresh = hub.user_token("alice")
    hub.stop()
    # A JSON 503 in auth's words, not a 401 the client would answer with other credentials.
    assert whoami(gateway, fresh) == (503, {"error": "JupyterHub is unavailable"})


GRACE_SECONDS = 2.0


def create_cluster(gateway: Gateway, token: str) -> tuple[str, str]:
    """A new cluster's name, and the session cookie of the login."""
    status, headers, body = gateway.request(
        "POST",
        "/api/v1/clusters/",
        user=None,
        body=json.dumps({"cluster_options": {}}).encode(),
        headers={"Authorization": f"jupyterhub {token}"},
    )
    assert status == 201, body
    name: str = body["name"]
    (cookie,) = [v for k, v in headers.items() if k.lower() == "set-cookie"]
    return name, cookie.split(";", 1)[0]


def cluster_status(gateway: Gateway, cookie: str, name: str) -> str:
    status, _, body = gateway.request(
        "GET", f"/api/v1/clusters/{name}", user=None, headers={"Cookie": cookie}
    )
    assert status == 200, body
    result: str = body["status"]
    return result


def stopped_by_auth(gateway: Gateway) -> float:
    return gateway.metrics("auth").get(("flotilla_auth_owner_clusters_stopped_total", ()), 0.0)


def test_clusters_end_a_grace_period_after_the_owners_server(
    hub: JupyterHub, tmp_path: Path
) -> None:
    extra = f"""
        c.JupyterHubAuthenticator.server_stopped_grace = {GRACE_SECONDS}
        c.JupyterHubAuthenticator.server_check_period = 0.2
        """
    hub.start_server("alice")
    alice, bob = hub.user_token("alice"), hub.user_token("bob")
    with running_gateway(tmp_path, hub_config(hub, extra)) as gateway:
        with_server, alice_cookie = create_cluster(gateway, alice)
        without_server, bob_cookie = create_cluster(gateway, bob)
        # bob never had a server: his cluster ends after the grace period.
        wait_for(
            lambda: cluster_status(gateway, bob_cookie, without_server) == "STOPPED",
            60,
            "bob's cluster to end",
        )
        assert cluster_status(gateway, alice_cookie, with_server) in {"PENDING", "RUNNING"}

        stopped_at = time.monotonic()
        hub.stop_server("alice")
        wait_for(
            lambda: cluster_status(gateway, alice_cookie, with_server) == "STOPPED",
            60,
            "alice's cluster to end",
        )
        assert time.monotonic() - stopped_at >= GRACE_SECONDS
        assert stopped_by_auth(gateway) == 2

        # While the hub is down nobody's server can be told, so no cluster ends, not
        # even a serverless owner's: watch the checks fail for longer than the grace.
        again, _ = create_cluster(gateway, bob)
        hub.stop()
        log = tmp_path / "logs" / "auth.log"
        failed = "cannot ask JupyterHub for the servers of user bob"
        before = log.read_text(errors="replace").count(failed)
        wait_for(
            lambda: (
                log.read_text(errors="replace").count(failed) >= before + 3 * GRACE_SECONDS / 0.2
            ),
            60,
            "failed server checks",
        )
        assert cluster_status(gateway, bob_cookie, again) in {"PENDING", "RUNNING"}
        assert stopped_by_auth(gateway) == 2
    auth_log = log.read_text(errors="replace")
    assert f"stopped cluster {with_server} of user alice" in auth_log, auth_log[-3000:]


def test_a_person_signs_in_to_the_page_through_the_hub(
    hub: JupyterHub, tmp_path: Path, page: Page
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Browsers reach the hub through its proxy, the gateway reaches its API directly.
    extra = f"c.JupyterHubAuthenticator.jupyterhub_url = {hub.url!r}\n"
    with running_gateway(tmp_path, hub_config(hub, extra), public_port=hub.gateway_port) as gw:
        assert gw.address + "/api/v1/login/jupyterhub/callback" == hub.oauth_redirect_uri
        # A callback this browser did not start is refused, with a message (through
        # Envoy, whose local replies keep the body of a 403).
        status, _, body = gw.request(
            "GET", "/api/v1/login/jupyterhub/callback?code=x&state=y", user=None
        )
        assert status == 403 and "not started from this browser" in body["error"], body

        page.goto(gw.address + "/")
        page.get_by_role("button", name="Sign in with JupyterHub").click()

        # The hub's own login form (the dummy authenticator takes any password).
        expect(page).to_have_url(re.compile(rf"^{re.escape(hub.url)}/hub/login"))
        page.locator("#username_input").fill("bob")
        page.locator("#password_input").fill("any")
        page.locator("#login_submit").click()

        # Back on the gateway's page, signed in as the hub's user, admin by group.
        expect(page.locator("#who")).to_have_text("Signed in as bob (admin)")
        assert page.url == gw.address + "/"
        expect(page.get_by_text("You have no clusters.")).to_be_visible()
        state = [c for c in page.context.cookies() if c["name"] == "flotilla-jupyterhub-state"]
        assert state == []

        # Signing out offers the hub's button again; the hub still knows the browser,
        # so it signs straight back in.
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in with JupyterHub")).to_be_visible()
        page.get_by_role("button", name="Sign in with JupyterHub").click()
        expect(page.locator("#who")).to_have_text("Signed in as bob (admin)")
    auth_log = (tmp_path / "logs" / "auth.log").read_text(errors="replace")
    assert "user bob signed in from a browser (admin=True)" in auth_log, auth_log[-3000:]
    assert errors == []
