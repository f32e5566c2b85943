"""JupyterHub login end to end: the unmodified dask-gateway client (``auth="jupyterhub"``,
the token from ``JUPYTERHUB_API_TOKEN`` as in a notebook server) through Envoy and auth,
against a real hub with the gateway registered as a hub service."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_stack import Gateway, cluster_pids, running_gateway, upstream_python
from jupyterhub_hub import JupyterHub, jupyterhub_hub

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


@pytest.fixture()
def gateway(hub: JupyterHub, tmp_path: Path) -> Iterator[Gateway]:
    extra = textwrap.dedent(
        f"""
        c.Auth.authenticator_class = "jupyterhub"
        c.Auth.admin_groups = ["gateway-admins"]
        c.JupyterHubAuthenticator.jupyterhub_api_url = {hub.api_url!r}
        c.JupyterHubAuthenticator.jupyterhub_api_token = {hub.service_token!r}
        """
    )
    with running_gateway(tmp_path, extra) as running:
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
    # A JSON 503, not a 401 the client would answer with other credentials. (Envoy's
    # local-reply mapping replaces the body of every 503 it sends, auth's denials included.)
    status, body = whoami(gateway, fresh)
    assert status == 503
    assert isinstance(body, dict) and set(body) == {"error"} and body["error"], body
