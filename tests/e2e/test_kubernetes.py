"""Acceptance (issue 13): Dask clusters as pods on a real kube-apiserver, controller-manager
and kube-scheduler (tests/k8s_cluster.py), run by the test-only node agent
(tests/k8s_node_agent.py), the launcher holding the Helm chart's RBAC
(tests/kube_gateway.py), everything through the real Envoy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flotilla import ClusterStatus, GatewayCluster, JupyterHubAuth
from flotilla.client import WorkerReport
from gateway_stack import upstream_python
from helpers import wait_for
from jupyterhub_hub import JupyterHub, jupyterhub_hub
from k8s_cluster import KubeControlPlane, KubeError
from k8s_node_fixture import KubeNode
from kube_gateway import KubeGateway, dump, kube_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.k8s, pytest.mark.timeout(600)]

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_kubernetes.py"

# Options for the failure tests: the workers' image (the scheduler keeps
# c.KubeClusterConfig.image), and their memory (the pod's limit and dask's alike) with
# dask's own memory management off, so that a task over the limit meets the node's OOM
# kill, not dask pausing or restarting its worker first.
OPTIONS = textwrap.dedent(
    """
    from flotilla_registry.options import Integer, Options, String

    def _handler(options, user):
        memory = options.worker_memory_mib * 2**20
        out = {
            "worker_memory": memory,
            "worker_memory_limit": memory,
            "environment": {
                f"DASK_DISTRIBUTED__WORKER__MEMORY__{key}": "False"
                for key in ("TARGET", "SPILL", "PAUSE", "TERMINATE")
            },
        }
        if options.worker_image:
            out["worker_extra_container_config"] = {"image": options.worker_image}
        return out

    c.Registry.cluster_options = Options(
        String("worker_image", default="", label="Worker image"),
        Integer("worker_memory_mib", default=1024, min=128, max=4096, label="Worker MiB"),
        handler=_handler,
    )
    """
)
LAUNCHER = "launcher-kubernetes"


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
    # Flotilla's own client logs in as alice's notebook server would, with her hub token.
    hub_login = JupyterHubAuth(hub.user_token("alice"))
    try:
        with kube_gateway(kube, namespace, state_dir, login + OPTIONS, hub_login) as gateway:
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


def _pid(pod: dict[str, Any]) -> int:
    """The pid of the pod's container process (the node agent's ``process://`` ids)."""
    cid = pod["status"]["containerStatuses"][0]["containerID"]
    return int(cid.removeprefix("process://"))


def _failed(gw: Any, name: str) -> Any:
    return wait_for(
        lambda: (r := gw.get_cluster(name)).status is ClusterStatus.FAILED and r,
        60,
        f"cluster {name} to fail",
    )


def _connected(client: Any) -> set[str]:
    return {w["name"] for w in client.scheduler_info()["workers"].values()}


def test_a_deleted_worker_pod_is_replaced(stack: KubeGateway) -> None:
    api = stack.kube.client()
    with stack.client() as gw, gw.new_cluster() as cluster:
        name = cluster.name
        cluster.scale(2)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            before = wait_for(
                lambda: len(p := stack.running_pods(name, "dask-worker")) == 2 and p,
                60,
                "two worker pods Running",
            )
            gone = before[0]["metadata"]["name"]
            kept = before[1]["metadata"]["name"]
            api.delete(f"/api/v1/namespaces/{stack.namespace}/pods/{gone}")
            wait_for(
                lambda: (
                    gone not in {p["metadata"]["name"] for p in stack.pods(name, "dask-worker")}
                ),
                60,
                f"worker pod {gone} gone",
            )

            def replaced() -> list[str] | None:
                names = sorted(
                    p["metadata"]["name"] for p in stack.running_pods(name, "dask-worker")
                )
                return names if len(names) == 2 and gone not in names else None

            names = wait_for(replaced, 120, "a new worker pod Running in place of the deleted")
            assert kept in names, names
            wait_for(lambda: len(_connected(client)) == 2, 120, "the Dask client to see 2 workers")
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            assert gw.get_cluster(name).status is ClusterStatus.RUNNING


def test_a_deleted_scheduler_pod_fails_the_cluster_in_words(stack: KubeGateway) -> None:
    api = stack.kube.client()
    with stack.client() as gw:
        cluster = gw.new_cluster()
        name = cluster.name
        try:
            [pod] = stack.running_pods(name, "dask-scheduler")
            api.delete(f"/api/v1/namespaces/{stack.namespace}/pods/{pod['metadata']['name']}")
            report = _failed(gw, name)
            assert "scheduler" in report.reason and "was deleted" in report.reason, report.reason
            assert pod["metadata"]["name"] in report.reason or "the pod of" in report.reason
        finally:
            cluster.close()
        wait_for(lambda: not any(stack.objects(name).values()), 60, "the cluster's objects gone")


def test_a_worker_image_that_cannot_be_pulled_fails_the_cluster_naming_it(
    stack: KubeGateway,
) -> None:
    image = "flotilla-test/no-such-image:1"
    with stack.client() as gw:
        cluster = gw.new_cluster(worker_image=image)
        name = cluster.name
        try:
            cluster.scale(1)
            # Each worker fails to start; worker_start_failure_limit (3) of them in a row
            # fail the cluster, with the last one's reason.
            report = _failed(gw, name)
            assert "consecutive workers failed to start" in report.reason, report.reason
            assert f"image {image} could not be pulled" in report.reason, report.reason
        finally:
            cluster.close()
        wait_for(lambda: not any(stack.objects(name).values()), 60, "the cluster's objects gone")


def test_a_worker_over_its_memory_limit_is_oom_killed_in_words(stack: KubeGateway) -> None:
    with stack.client() as gw, gw.new_cluster(worker_memory_mib=400) as cluster:
        name = cluster.name
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
            [pod] = stack.running_pods(name, "dask-worker")
            assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(400 << 20)
            worker = pod["metadata"]["annotations"]["flotilla.dev/worker"]

            def hog() -> int:
                import time

                block = b"x" * (600 << 20)
                time.sleep(120)
                return len(block)

            future = client.submit(hog, pure=False)

            def failed() -> WorkerReport | None:
                return next(
                    (w for w in gw.list_workers(name)
                     if w.name == worker and w.status is ClusterStatus.FAILED),
                    None,
                )  # fmt: skip

            report = wait_for(failed, 120, f"worker {worker} FAILED in the gateway's list")
            future.cancel()
            # What the user is told, in words, not the scheduler's "left unexpectedly".
            assert "exceeded its memory limit of 400 MiB (OOMKilled)" in (report.reason or ""), (
                report.reason
            )
            # The gateway replaces it; the cluster stays up.
            wait_for(
                lambda: [p for p in stack.running_pods(name, "dask-worker")
                         if p["metadata"]["name"] != pod["metadata"]["name"]],
                120,
                "a replacement worker pod Running",
            )  # fmt: skip
            assert gw.get_cluster(name).status is ClusterStatus.RUNNING


def _worker_pods(stack: KubeGateway, name: str) -> list[dict[str, Any]]:
    """Every worker pod of cluster ``name``, by its labels, being deleted or not."""
    return stack.pods(name, "dask-worker")


def test_the_launcher_killed_during_scale_up_readopts_without_duplicates(
    stack: KubeGateway,
) -> None:
    with stack.client() as gw, gw.new_cluster() as cluster:
        name = cluster.name
        with cluster.get_client(set_as_default=False) as client:
            cluster.scale(3)
            wait_for(lambda: _worker_pods(stack, name), 60, "a first worker pod", interval=0.01)
            old = stack.stack.pid(LAUNCHER)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: stack.stack.pid(LAUNCHER) != old, 30, "a new launcher")

            client.wait_for_workers(3, timeout=180)
            running = wait_for(
                lambda: len(p := stack.running_pods(name, "dask-worker")) == 3 and p,
                120,
                "three worker pods Running",
            )
            # Nothing more comes: the workers connected are exactly the three pods'.
            wait_for(
                lambda: len(_worker_pods(stack, name)) == 3,
                60,
                "no worker pod but the three running",
            )
            pods = _worker_pods(stack, name)
            workers = [p["metadata"]["annotations"]["flotilla.dev/worker"] for p in pods]
            assert len(set(workers)) == 3, dump([p["metadata"] for p in pods])
            assert {p["metadata"]["name"] for p in pods} == {p["metadata"]["name"] for p in running}
            assert _connected(client) == set(workers), (_connected(client), workers)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            assert gw.get_cluster(name).status is ClusterStatus.RUNNING
            assert len(_worker_pods(stack, name)) == 3


def test_logs_are_kept_after_shutdown_and_after_a_failure(stack: KubeGateway) -> None:
    with stack.client() as gw:
        cluster: GatewayCluster = gw.new_cluster()
        name = cluster.name
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        cluster.shutdown()
        wait_for(lambda: not any(stack.objects(name).values()), 60, "the cluster's pods gone")
        logs = gw.get_cluster_logs(name)
        assert next(iter(logs)) == "scheduler" and "Scheduler at" in logs["scheduler"], logs
        assert any(k.startswith("worker-") and "Start worker" in v for k, v in logs.items()), logs

        # A scheduler whose process exits fails the cluster; its log is kept all the same.
        failing = gw.new_cluster()
        name = failing.name
        try:
            [pod] = stack.running_pods(name, "dask-scheduler")
            os.kill(_pid(pod), signal.SIGKILL)
            report = _failed(gw, name)
            assert "scheduler" in report.reason, report.reason
            wait_for(lambda: not any(stack.objects(name).values()), 60, "the cluster's pods gone")
            logs = gw.get_cluster_logs(name)
            assert "Scheduler at" in logs.get("scheduler", ""), logs
        finally:
            failing.close()
