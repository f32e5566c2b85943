"""``helm install`` of the chart into a real kube-apiserver (tests/k8s_cluster.py): every
object is created, Secrets the chart generates survive an upgrade, and the launcher's
ServiceAccount can do what the Kubernetes backend needs in the clusters' namespace and
nothing outside it, as the API server's RBAC decides.

No kubelet runs there, so the pods stay Pending; nothing here needs them running.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_cluster import KubeControlPlane, KubeError

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.timeout(300)]

PROJECT = Path(__file__).resolve().parents[3]
CHART = PROJECT / "deploy" / "helm" / "flotilla"
RELEASE = "gw"
FULLNAME = "gw-flotilla"

#: The API path of each kind the chart renders (namespaced collections).
PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}


class Helm:
    """The helm binary of the control plane, with a kubeconfig and homes of its own."""

    def __init__(self, kube: KubeControlPlane, home: Path) -> None:
        self.binary = kube.bin_dir / "helm"
        kubeconfig = kube.write_kubeconfig(home / "kubeconfig")
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stderr}"
        return done.stdout


@pytest.fixture
def cluster_namespace(kube: KubeControlPlane) -> Iterator[str]:
    """A second namespace, for the Dask clusters."""
    name = kube.create_namespace("dask")
    yield name
    kube.client().delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def installed(
    kube: KubeControlPlane, kube_namespace: str, cluster_namespace: str, tmp_path: Path
) -> Iterator[tuple[Helm, list[dict[str, Any]]]]:
    """The chart installed in ``kube_namespace``, its clusters in ``cluster_namespace``;
    uninstalled afterwards."""
    helm = Helm(kube, tmp_path)
    helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        kube_namespace,
        "--set",
        f"kubernetes.clusterNamespace={cluster_namespace}",
    )
    manifest = helm("get", "manifest", RELEASE, "--namespace", kube_namespace)
    objects = [o for o in yaml.safe_load_all(manifest) if o is not None]
    yield helm, objects
    helm("uninstall", RELEASE, "--namespace", kube_namespace)


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "flotilla-test/none:dev"}]},
    }


def test_install_creates_every_object_and_upgrade_keeps_the_generated_secrets(
    kube: KubeControlPlane,
    kube_namespace: str,
    cluster_namespace: str,
    installed: tuple[Helm, list[dict[str, Any]]],
) -> None:
    helm, objects = installed
    api = kube.client()
    assert {o["kind"] for o in objects} == set(PATHS)
    for obj in objects:
        namespace = obj["metadata"].get("namespace", kube_namespace)
        path = PATHS[obj["kind"]].format(ns=namespace) + "/" + obj["metadata"]["name"]
        live = api.get(path)
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, path
    role = api.get(PATHS["Role"].format(ns=cluster_namespace) + f"/{FULLNAME}-launcher")
    assert role["metadata"]["namespace"] == cluster_namespace

    secret = PATHS["Secret"].format(ns=kube_namespace) + f"/{FULLNAME}-gateway"
    before = api.get(secret)["data"]
    assert len(base64.b64decode(before["identity_key"])) >= 32
    helm("upgrade", RELEASE, str(CHART), "--namespace", kube_namespace, "--reuse-values")
    assert api.get(secret)["data"] == before


def test_launcher_service_account_is_confined_to_the_cluster_namespace(
    kube: KubeControlPlane,
    kube_namespace: str,
    cluster_namespace: str,
    installed: tuple[Helm, list[dict[str, Any]]],
) -> None:
    token = kube.service_account_token(kube_namespace, f"{FULLNAME}-launcher")
    launcher = kube.client(token)

    # What the backend does, in the clusters' namespace.
    pods = f"/api/v1/namespaces/{cluster_namespace}/pods"
    created = launcher.post(pods, _pod("scheduler"))
    assert created["metadata"]["namespace"] == cluster_namespace
    launcher.patch(f"{pods}/scheduler", {"metadata": {"labels": {"a": "b"}}})
    assert [p["metadata"]["name"] for p in launcher.get(pods)["items"]] == ["scheduler"]
    owner = launcher.post(
        f"/api/v1/namespaces/{cluster_namespace}/configmaps", {"metadata": {"name": "owner"}}
    )
    assert owner["metadata"]["name"] == "owner"
    launcher.get(f"/api/v1/namespaces/{cluster_namespace}/events")
    launcher.delete(f"{pods}/scheduler")

    # Nothing elsewhere: not the gateway's own Secrets, not another namespace, nothing
    # cluster-wide, no other kinds.
    refused = [
        ("GET", f"/api/v1/namespaces/{kube_namespace}/secrets/{FULLNAME}-gateway"),
        ("GET", f"/api/v1/namespaces/{kube_namespace}/secrets"),
        ("POST", f"/api/v1/namespaces/{kube_namespace}/pods"),
        ("GET", "/api/v1/namespaces/default/secrets"),
        ("GET", "/api/v1/secrets"),
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/namespaces"),
        ("POST", f"/apis/apps/v1/namespaces/{cluster_namespace}/deployments"),
        ("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cluster_namespace}/roles"),
    ]
    for method, path in refused:
        body = _pod("x") if method == "POST" else None
        with pytest.raises(KubeError) as error:
            launcher.request(method, path, body)
        assert error.value.status == 403, f"{method} {path}: {error.value}"
