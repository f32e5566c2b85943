"""The kubernetes backend's pure parts: label values, manifests, per-cluster settings and
the reasons read from pod status dicts (no API server)."""

from __future__ import annotations

from typing import Any

import pytest
from flotilla_launcher.backends.base import BackendError, ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.commands import CERT_FILE, KEY_FILE
from flotilla_launcher.backends.kubernetes import (
    API_PORT,
    CREDENTIALS_DIR,
    DASHBOARD_PORT,
    LABEL_VALUE_RE,
    SCHEDULER_PORT,
    KubeBackend,
    KubeSettings,
    dns_name,
    label_value,
    merge,
    pod_status,
    scheduler_manifests,
    worker_pod,
)

OWNER = {"metadata": {"name": "flotilla-c1", "uid": "0000-1111"}}


def _cluster(owner: str = "alice", **extra: Any) -> ClusterSpec:
    return ClusterSpec(
        name="c1",
        owner=owner,
        config=ClusterConfig(
            environment={"FOO": "bar"},
            worker_cores=2,
            worker_memory=3 * 2**30,
            worker_threads=4,
            scheduler_memory=2**30,
            extra=extra,
        ),
        tls_cert="CERT",
        tls_key="KEY",
        token="secret-token",
        api_url="http://gateway:8000/api",
    )


def _valid(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE_RE.match(value) is not None


@pytest.mark.parametrize(
    "name", ["alice", "alice@non-alpha.characters", "Alice", "a" * 100, "-x-", "é", "", "a.b_c"]
)
def test_label_values_are_valid_and_distinct(name: str) -> None:
    value = label_value(name)
    assert _valid(value), value
    others = {label_value(n) for n in ("alice", "Alice", "ALICE", "alice@x", "alice-x")}
    assert len(others) == 5


def test_a_valid_lowercase_name_is_its_own_label_value() -> None:
    assert label_value("alice") == "alice"
    assert label_value("Alice") != "alice" and label_value("Alice").startswith("alice-")
    assert label_value("a" * 100).startswith("a" * 50)


def test_object_names_are_dns_labels() -> None:
    assert dns_name("flotilla", "c1") == "flotilla-c1"
    long = dns_name("flotilla", "X" * 200)
    assert len(long) <= 63 and long == long.lower() and long[0].isalnum()


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def test_every_object_carries_valid_labels_and_the_owner_reference() -> None:
    cluster = _cluster(owner="Alice@Example.COM")
    objects = scheduler_manifests("prod", cluster, OWNER)
    worker = worker_pod("prod", WorkerSpec(cluster, "w1", "10.0.0.5:8786"), OWNER, "10.0.0.5:8786")
    for obj in [*objects, worker]:
        meta = obj["metadata"]
        assert all(_valid(v) for v in meta["labels"].values()), meta["labels"]
        assert meta["labels"]["app.kubernetes.io/name"] == "flotilla"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "flotilla"
        assert meta["labels"]["gateway.dask.org/instance"] == "prod"
        assert meta["labels"]["gateway.dask.org/cluster"] == "c1"
        assert meta["annotations"]["flotilla.dev/owner"] == "Alice@Example.COM"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "flotilla-c1",
                "uid": "0000-1111",
                "blockOwnerDeletion": True,
            }
        ]
    kinds = _by_kind(objects)
    assert kinds["Pod"]["metadata"]["labels"]["app.kubernetes.io/component"] == "dask-scheduler"
    assert worker["metadata"]["labels"]["app.kubernetes.io/component"] == "dask-worker"
    assert worker["metadata"]["annotations"]["flotilla.dev/worker"] == "w1"


def test_the_secret_holds_cert_key_and_token() -> None:
    secret = _by_kind(scheduler_manifests("i", _cluster(), OWNER))["Secret"]
    assert set(secret["data"]) == {CERT_FILE, KEY_FILE, "api-token"}
    assert "secret-token" not in str(secret)  # base64


def test_the_scheduler_listens_on_its_pod_ip_at_fixed_ports() -> None:
    objects = _by_kind(scheduler_manifests("i", _cluster(), OWNER))
    pod = objects["Pod"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    argv = container["command"]
    assert argv[argv.index("--host") + 1] == "$(POD_IP)"
    assert argv[argv.index("--port") + 1] == str(SCHEDULER_PORT)
    assert argv[argv.index("--dashboard-address") + 1] == f"$(POD_IP):{DASHBOARD_PORT}"
    assert argv[argv.index("--dg-api-address") + 1] == f"$(POD_IP):{API_PORT}"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container["env"][0]["name"] == "POD_IP"
    assert env["FOO"]["value"] == "bar"
    assert env["DASK_GATEWAY_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "api-token"
    cert = f"{CREDENTIALS_DIR}/{CERT_FILE}"
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT"]["value"] == cert
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"]["value"].endswith(KEY_FILE)
    assert container["volumeMounts"][0]["mountPath"] == CREDENTIALS_DIR
    assert spec["volumes"][0]["secret"]["secretName"] == "flotilla-c1"
    assert spec["restartPolicy"] == "Never"
    assert objects["Service"]["spec"]["selector"]["app.kubernetes.io/component"] == (
        "dask-scheduler"
    )


def test_resources_requests_from_the_config_limits_from_the_settings() -> None:
    cluster = _cluster(worker_cores_limit=3.5, worker_memory_limit=4 * 2**30)
    pod = worker_pod("i", WorkerSpec(cluster, "w1", "a:1"), OWNER, "10.1.2.3:8786")
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "2000m", "memory": str(3 * 2**30)},
        "limits": {"cpu": "3500m", "memory": str(4 * 2**30)},
    }
    scheduler = _by_kind(scheduler_manifests("i", _cluster(), OWNER))["Pod"]
    limits = scheduler["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1000m", "memory": str(2**30)}  # default: the requests


def test_the_worker_command_connects_to_the_given_address() -> None:
    pod = worker_pod("i", WorkerSpec(_cluster(), "w1", "x:1"), OWNER, "10.1.2.3:8786")
    argv = pod["spec"]["containers"][0]["command"]
    assert "tls://10.1.2.3:8786" in argv
    assert argv[argv.index("--nthreads") + 1] == "4"
    assert argv[argv.index("--name") + 1] == "w1"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["DASK_GATEWAY_WORKER_NAME"] == "w1"


def test_extra_configs_deep_merge() -> None:
    cluster = _cluster(
        image="example/img:1",
        image_pull_policy="Always",
        image_pull_secrets=[{"name": "regcred"}],
        worker_extra_pod_config={
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "nodeSelector": {"pool": "big"},
            "serviceAccountName": "dask",
        },
        worker_extra_container_config={
            "env": [{"name": "EXTRA", "value": "1"}],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        },
        worker_extra_pod_labels={"team": "x"},
        worker_extra_pod_annotations={"note": "hi"},
    )
    pod = worker_pod("i", WorkerSpec(cluster, "w1", "a:1"), OWNER, "a:1")
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert spec["nodeSelector"] == {"pool": "big"}
    assert spec["serviceAccountName"] == "dask"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["restartPolicy"] == "Never"
    assert container["image"] == "example/img:1"
    assert container["imagePullPolicy"] == "Always"
    assert container["env"][-1] == {"name": "EXTRA", "value": "1"}
    assert container["env"][0]["name"] == "POD_IP"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["cpu"] == "2000m"
    assert pod["metadata"]["labels"]["team"] == "x"
    assert pod["metadata"]["annotations"]["note"] == "hi"


def test_merge_rules() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert merge(base, {"a": {"c": [2], "e": 3}, "d": 2}) == {
        "a": {"b": 1, "c": [1, 2], "e": 3},
        "d": 2,
    }
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"worker_extra_pod_config": ["x"]}, "worker_extra_pod_config must be a dict"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy must be"),
        ({"image_pull_secrets": "regcred"}, "image_pull_secrets must be a list"),
        ({"worker_extra_pod_labels": {"k": "not valid!"}}, "not a valid label value"),
        ({"worker_cores_limit": "lots"}, "worker_cores_limit must be a number"),
    ],
)
def test_bad_settings_are_refused_in_words(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(BackendError, match=words):
        KubeSettings.of(_cluster(**extra).config)


# -- reasons ------------------------------------------------------------------------------


def _pod(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "containers": [{"image": "img:1", "resources": {"limits": {"memory": str(2**30)}}}]
        },
        "status": {"phase": phase, **status},
    }


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"image": "img:1", "state": {"waiting": {"reason": reason, "message": message}}}
        ]
    }


def _terminated(**state: Any) -> dict[str, Any]:
    return {"containerStatuses": [{"image": "img:1", "state": {"terminated": state}}]}


def test_running_and_fresh_pending_pods_run() -> None:
    assert pod_status(_pod("Running"), "worker w1").running
    assert pod_status(_pod("Pending"), "worker w1").running


def test_a_deleted_pod_is_not_running() -> None:
    status = pod_status(None, "worker w1")
    assert not status.running and "deleted" in status.reason


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_errors(reason: str) -> None:
    status = pod_status(_pod("Pending", **_waiting(reason, "manifest unknown")), "worker w1")
    assert not status.running
    assert status.reason == "image img:1 could not be pulled: manifest unknown"


def test_oom_killed() -> None:
    status = pod_status(
        _pod("Failed", **_terminated(reason="OOMKilled", exitCode=137)), "worker w1"
    )
    assert status.reason == "worker w1 exceeded its memory limit of 1 GiB (OOMKilled)"


def test_exit_codes() -> None:
    status = pod_status(_pod("Failed", **_terminated(reason="Error", exitCode=3)), "the scheduler")
    assert status.reason == "the scheduler exited with code 3"
    assert not pod_status(_pod("Succeeded"), "worker w1").running


def test_evicted() -> None:
    status = pod_status(
        _pod("Failed", reason="Evicted", message="The node was low on resource: memory."),
        "worker w1",
    )
    assert (
        status.reason
        == "the pod p1 of worker w1 was evicted: The node was low on resource: memory."
    )


def test_unschedulable_fails_only_after_the_start_timeout() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu.",
    }
    pod = _pod("Pending", conditions=[condition])
    created = 1767225600.0  # 2026-01-01T00:00:00Z
    assert pod_status(pod, "worker w1", start_timeout=60, now=created + 30).running
    late = pod_status(pod, "worker w1", start_timeout=60, now=created + 61)
    assert not late.running
    assert late.reason == (
        "the pod p1 of worker w1 could not be scheduled within 60s: "
        "0/3 nodes are available: 3 Insufficient cpu."
    )


def test_the_backend_and_its_cluster_config_are_registered() -> None:
    from flotilla_common.clusterconfig import KubeClusterConfig, config_class_for
    from flotilla_launcher.backends.base import load_backend
    from flotilla_launcher.backends.kubernetes import KubeBackend

    assert load_backend("kubernetes") is KubeBackend
    assert config_class_for("kubernetes") is KubeClusterConfig
    names = set(KubeClusterConfig.class_own_traits(config=True))
    assert {
        "image",
        "image_pull_policy",
        "image_pull_secrets",
        "scheduler_cores_limit",
        "scheduler_memory_limit",
        "worker_cores_limit",
        "worker_memory_limit",
        "scheduler_extra_container_config",
        "scheduler_extra_pod_config",
        "scheduler_extra_pod_annotations",
        "scheduler_extra_pod_labels",
        "worker_extra_container_config",
        "worker_extra_pod_config",
        "worker_extra_pod_annotations",
        "worker_extra_pod_labels",
    } <= names


def test_service_addressing_makes_the_scheduler_report_its_service_name() -> None:
    from flotilla import scheduler_preload
    from flotilla_launcher.backends import kubernetes

    assert kubernetes.ADVERTISE_HOST == scheduler_preload.ADVERTISE_HOST
    plain = _by_kind(scheduler_manifests("i", _cluster(), OWNER))["Pod"]
    named = _by_kind(scheduler_manifests("i", _cluster(), OWNER, "svc-c1.dask.svc"))["Pod"]
    plain_env = {e["name"]: e.get("value") for e in plain["spec"]["containers"][0]["env"]}
    named_env = {e["name"]: e.get("value") for e in named["spec"]["containers"][0]["env"]}
    assert kubernetes.ADVERTISE_HOST not in plain_env
    assert named_env[kubernetes.ADVERTISE_HOST] == "svc-c1.dask.svc"


@pytest.mark.parametrize(
    ("setting", "values", "message"),
    [
        ("common_labels", {"team": "a b"}, "is not a valid label value"),
        ("common_labels", {"team": "x" * 64}, "is not a valid label value"),
        ("common_labels", {"bad key": "a"}, "is not a valid key"),
        ("common_labels", {"Example.org/team": "a"}, "is not a valid key"),
        ("common_labels", {"gateway.dask.org/cluster": "a"}, "is set by Flotilla itself"),
        ("common_annotations", {"flotilla.dev/owner": "a"}, "is set by Flotilla itself"),
        ("common_annotations", {"note": 3}, "must be a string"),
    ],
)
def test_common_labels_kubernetes_would_refuse_stop_the_launcher(
    setting: str, values: dict[str, object], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        KubeBackend(kube_api_url="https://127.0.0.1:1", **{setting: values})
    text = str(stopped.value)
    assert text.startswith(f"c.KubeBackend.{setting}") and message in text, text


def test_annotations_may_be_any_text() -> None:
    backend = KubeBackend(
        kube_api_url="https://127.0.0.1:1",
        common_labels={"example.org/team": "climate-1"},
        common_annotations={"description": "Owned by the climate group; ask #dask"},
    )
    assert backend._common_annotations["description"].startswith("Owned by")
