"""A whole gateway whose clusters are pods on the test Kubernetes (tests/k8s_cluster.py, the
test-only node agent of tests/k8s_node_agent.py), for the kubernetes backend's e2e tests.

The launcher talks to the real API server as the Helm chart's launcher does: with a
ServiceAccount token (TokenRequest) bound to the Role the chart renders
(``helm template``, deploy/helm/flotilla), in a namespace of its own. Pods run the
project's virtualenv (the node agent's image ``flotilla-test/dask:dev``); the scheduler
reaches the gateway's public address on 127.0.0.1 as a pod reaches a Service.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from flotilla import BasicAuth, GatewayAuth
from flotilla import Gateway as FlotillaGateway
from gateway_stack import Gateway, running_stack, write_config
from helpers import wait_for
from k8s_cluster import KubeClient, KubeControlPlane
from k8s_node_fixture import DASK_IMAGE

PROJECT = Path(__file__).resolve().parents[1]
CHART = PROJECT / "deploy" / "helm" / "flotilla"
RELEASE = "flotilla"


def chart_rbac(kube: KubeControlPlane, namespace: str) -> list[dict[str, Any]]:
    """The launcher's ServiceAccount, Role and RoleBinding as the chart renders them for
    clusters in ``namespace`` (the chart installed into the same namespace)."""
    done = subprocess.run(
        [str(kube.bin_dir / "helm"), "template", RELEASE, str(CHART), "--namespace", namespace,
         "--set", f"kubernetes.clusterNamespace={namespace}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    return [
        o
        for o in objects
        if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")
        and "launcher" in o["metadata"]["name"]
    ]


def apply_launcher_rbac(kube: KubeControlPlane, namespace: str) -> str:
    """Create the chart's launcher RBAC in ``namespace``; a token of its ServiceAccount."""
    api = kube.client()
    account = ""
    for item in chart_rbac(kube, namespace):
        kind = item["kind"]
        if kind == "ServiceAccount":
            api.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", item)
            account = item["metadata"]["name"]
        else:
            plural = {"Role": "roles", "RoleBinding": "rolebindings"}[kind]
            api.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}", item)
    assert account, "the chart renders no launcher ServiceAccount"
    return kube.service_account_token(namespace, account)


@dataclass
class KubeGateway(Gateway):
    kube: KubeControlPlane
    namespace: str
    token_file: Path
    #: How :meth:`client` logs in (the tests' user alice).
    auth: GatewayAuth = field(default_factory=lambda: BasicAuth("alice"))

    @property
    def launcher_api(self) -> KubeClient:
        """The API server as the launcher sees it (the chart's RBAC)."""
        return self.kube.client(self.token_file.read_text().strip())

    def objects(self, cluster: str) -> dict[str, list[str]]:
        """Kind -> names of the cluster's pods, services, secrets and configmaps."""
        api = self.kube.client()
        selector = {"labelSelector": f"gateway.dask.org/cluster={cluster}"}
        found = {}
        for kind in ("pods", "services", "secrets", "configmaps"):
            items = api.get(f"/api/v1/namespaces/{self.namespace}/{kind}", selector)["items"]
            found[kind] = sorted(i["metadata"]["name"] for i in items)
        return found

    def client(self) -> FlotillaGateway:
        return FlotillaGateway(self.address, auth=self.auth)

    def running_pods(self, cluster: str, component: str) -> list[dict[str, Any]]:
        """The cluster's pods of ``component`` Running and not being deleted."""
        return [
            p
            for p in self.pods(cluster, component)
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]

    def pods(self, cluster: str, component: str) -> list[dict[str, Any]]:
        selector = f"gateway.dask.org/cluster={cluster},app.kubernetes.io/component={component}"
        return list(
            self.kube.client().get(
                f"/api/v1/namespaces/{self.namespace}/pods", {"labelSelector": selector}
            )["items"]
        )


def launcher_settings(kube: KubeControlPlane, namespace: str, token_file: Path) -> str:
    return textwrap.dedent(
        f"""
        c.Registry.backends = ["kubernetes"]
        c.Launcher.status_check_period = 1.0
        c.KubeBackend.kube_api_url = {kube.api_url!r}
        c.KubeBackend.ca_file = {str(kube.ca_file)!r}
        c.KubeBackend.api_token_file = {str(token_file)!r}
        c.KubeBackend.namespace = {namespace!r}
        c.KubeBackend.instance = "e2e"
        c.KubeClusterConfig.image = {DASK_IMAGE!r}
        c.ClusterConfig.scheduler_cmd = ["dask", "scheduler"]
        c.ClusterConfig.worker_cmd = ["dask", "worker"]
        """
    )


def supervise(gateway: Gateway, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        gateway.stack.check_children()


@contextlib.contextmanager
def kube_gateway(
    kube: KubeControlPlane,
    namespace: str,
    state_dir: Path,
    extra: str = "",
    auth: GatewayAuth | None = None,
) -> Iterator[KubeGateway]:
    """The gateway (basic auth unless ``extra`` says otherwise; ``auth``: how its
    ``client()`` logs in) on ``namespace``; on exit every pod of the namespace must be
    gone."""
    token_file = state_dir / "launcher.token"
    token_file.write_text(apply_launcher_rbac(kube, namespace))
    token_file.chmod(0o600)
    config, address = write_config(
        state_dir, launcher_settings(kube, namespace, token_file) + extra
    )
    with running_stack(config, address, state_dir) as gateway:
        stop = threading.Event()
        # Restart a service that died, as flotilla-embedded does. A child gets SIGTERM when
        # the thread that started it ends: this thread outlives the tests.
        supervisor = threading.Thread(
            target=supervise, args=(gateway, stop), name="kube-gateway-supervisor"
        )
        supervisor.start()
        try:
            yield KubeGateway(
                gateway.address, gateway.stack, state_dir, kube, namespace, token_file,
                auth or BasicAuth("alice"),
            )  # fmt: skip
        finally:
            stop.set()
            supervisor.join()
    api = kube.client()
    wait_for(
        lambda: not api.get(f"/api/v1/namespaces/{namespace}/pods")["items"],
        30,
        "every pod of the gateway's namespace to be gone",
    )


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)
