"""The test control plane itself (tests/k8s_cluster.py): what the kubernetes backend's and
the chart's tests rely on holds on the real API server and controller-manager."""

from __future__ import annotations

import pytest
from helpers import wait_for
from k8s_cluster import KubeControlPlane, KubeError

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.timeout(300)]


def _pod(name: str, **metadata: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **metadata},
        "spec": {"containers": [{"name": "main", "image": "flotilla-test/none:dev"}]},
    }


def test_the_api_server_answers_its_release(kube: KubeControlPlane) -> None:
    version = kube.client().get("/version")
    assert version["gitVersion"] == "v1.37.2"


def test_an_invalid_pod_is_refused_with_422(kube: KubeControlPlane, kube_namespace: str) -> None:
    pod = _pod("bad")
    pod["spec"] = {"containers": [{"name": "Not_A_DNS_Label", "image": "x"}]}
    with pytest.raises(KubeError) as refused:
        kube.client().post(f"/api/v1/namespaces/{kube_namespace}/pods", pod)
    assert refused.value.status == 422
    assert "Not_A_DNS_Label" in str(refused.value)


def test_the_garbage_collector_deletes_what_an_owner_owned(
    kube: KubeControlPlane, kube_namespace: str
) -> None:
    api = kube.client()
    base = f"/api/v1/namespaces/{kube_namespace}"
    owner = api.post(f"{base}/configmaps", {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    api.post(f"{base}/pods", _pod("owned", ownerReferences=[reference]))
    api.post(f"{base}/secrets", {"metadata": {"name": "owned", "ownerReferences": [reference]}})
    api.delete(f"{base}/configmaps/owner", {"propagationPolicy": "Background"})
    wait_for(
        lambda: not api.exists(f"{base}/pods/owned") and not api.exists(f"{base}/secrets/owned"),
        30,
        "the garbage collector to delete the owned pod and secret",
    )


def test_a_watch_sees_a_pod_added_and_deleted(kube: KubeControlPlane, kube_namespace: str) -> None:
    api = kube.client()
    pods = f"/api/v1/namespaces/{kube_namespace}/pods"
    version = api.get(pods)["metadata"]["resourceVersion"]
    api.post(pods, _pod("watched"))
    api.delete(f"{pods}/watched", {"gracePeriodSeconds": "0"})
    seen = []
    for event in api.watch(pods, version, timeout=20):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if event["type"] == "DELETED":
            break
    assert seen[0] == ("ADDED", "watched")
    assert seen[-1] == ("DELETED", "watched")


def test_the_scheduler_reports_an_unschedulable_pod(
    kube: KubeControlPlane, kube_namespace: str
) -> None:
    # No node can hold it (there is none, or the node agent's is far smaller): the real
    # kube-scheduler says so in the pod's PodScheduled condition.
    api = kube.client()
    pod = _pod("huge")
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "100000"}}  # type: ignore[index]
    api.post(f"/api/v1/namespaces/{kube_namespace}/pods", pod)

    def unschedulable(item: dict[str, object]) -> bool:
        conditions = item.get("status", {}).get("conditions", [])  # type: ignore[attr-defined]
        return any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions
        )

    found = api.wait_for(
        f"/api/v1/namespaces/{kube_namespace}/pods/huge", unschedulable, 60, "Unschedulable"
    )
    assert found["status"]["phase"] == "Pending"


def test_rbac_limits_a_service_account_to_what_its_role_grants(
    kube: KubeControlPlane, kube_namespace: str
) -> None:
    api = kube.client()
    other = kube.create_namespace("other")
    try:
        api.post(f"/api/v1/namespaces/{other}/secrets", {"metadata": {"name": "theirs"}})
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{kube_namespace}"
        api.post(
            f"{rbac}/roles",
            {
                "metadata": {"name": "secrets"},
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}
                ],
            },
        )
        api.post(
            f"{rbac}/rolebindings",
            {
                "metadata": {"name": "secrets"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "secrets",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "default", "namespace": kube_namespace}
                ],
            },
        )
        account = kube.client(kube.service_account_token(kube_namespace, "default"))
        account.post(f"/api/v1/namespaces/{kube_namespace}/secrets", {"metadata": {"name": "mine"}})
        assert account.get(f"/api/v1/namespaces/{kube_namespace}/secrets/mine")
        with pytest.raises(KubeError) as refused:
            account.get(f"/api/v1/namespaces/{other}/secrets/theirs")
        assert refused.value.status == 403
        with pytest.raises(KubeError) as plain_user:
            kube.client(kube.user_token("alice")).get(f"/api/v1/namespaces/{kube_namespace}/pods")
        assert plain_user.value.status == 403
    finally:
        api.delete(f"/api/v1/namespaces/{other}")
