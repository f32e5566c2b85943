"""Acceptance (issue 13): Dask clusters as pods on a real kube-apiserver, controller-manager
and kube-scheduler (tests/k8s_cluster.py), run by the test-only node agent
(tests/k8s_node_agent.py), the launcher holding the Helm chart's RBAC
(tests/kube_gateway.py), everything through the real Envoy."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_stack import upstream_python
from helpers import wait_for
from jupyterhub_hub import JupyterHub, jupyterhub_hub
from k8s_cluster import KubeControlPlane, KubeError
from k8s_node_fixture import KubeNode
from kube_gateway import KubeGateway, dump, kube_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.k8s, pytest.mark.timeout(600)]

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_kubernetes.py"


@pytest.fixture(scope="module")
def hub() -> Iterator[JupyterHub]:
    """The real JupyterHub users log in to; the gateway is its registered service."""
    with jupyterhub_hub() as running:
        running.create_user("alice", groups=("dask-users",))
        yield running


@pytest.fixture(scope="module")
def stack(
    kube: KubeControlPlane,
    kube_node: KubeNode,
    hub: JupyterHub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KubeGateway]:
    namespace = kube.create_namespace("gateway")
    state_dir = tmp_path_factory.mktemp("kube-gateway")
    login = textwrap.dedent(
        f"""
        c.Auth.authenticator_class = "jupyterhub"
        c.JupyterHubAuthenticator.jupyterhub_api_url = {hub.api_url!r}
        c.JupyterHubAuthenticator.jupyterhub_api_token = {hub.service_token!r}
        """
    )
    try:
        with kube_gateway(kube, namespace, state_dir, login) as gateway:
            yield gateway
    finally:
        kube.client().delete(f"/api/v1/namespaces/{namespace}")


def test_upstream_client_with_a_hub_token_runs_a_cluster_of_pods(
    stack: KubeGateway, hub: JupyterHub
) -> None:
    # As in alice's notebook server: the hub's token in JUPYTERHUB_API_TOKEN.
    done = subprocess.run(
        [upstream_python(), str(SCENARIO), stack.address, "jupyterhub", stack.kube.api_url,
         str(stack.kube.ca_file), str(stack.token_file), stack.namespace],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "JUPYTERHUB_API_TOKEN": hub.user_token("alice")},
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-5000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(dump(result))
    assert result["status"] == "RUNNING"
    assert result["owner"] == "alice"
    assert len(result["scheduler_pods"]) == 1
    assert len(set(result["worker_pods"])) == 3
    assert result["sum"] == 1_000_000.0
    assert result["scheduler_address"].startswith("gateway://")

    name = result["name"]
    left = result["shutdown_at"] + 10 - time.time()
    wait_for(
        lambda: not any(stack.objects(name).values()),
        max(left, 0.5),
        "every pod, service, secret and configmap of the cluster to be gone",
    )


def test_the_launcher_cannot_read_secrets_of_another_namespace(stack: KubeGateway) -> None:
    other = stack.kube.create_namespace("other")
    try:
        stack.kube.client().post(
            f"/api/v1/namespaces/{other}/secrets", {"metadata": {"name": "theirs"}}
        )
        with pytest.raises(KubeError) as refused:
            stack.launcher_api.get(f"/api/v1/namespaces/{other}/secrets/theirs")
        assert refused.value.status == 403
        with pytest.raises(KubeError) as listing:
            stack.launcher_api.get(f"/api/v1/namespaces/{other}/secrets")
        assert listing.value.status == 403
    finally:
        stack.kube.client().delete(f"/api/v1/namespaces/{other}")
