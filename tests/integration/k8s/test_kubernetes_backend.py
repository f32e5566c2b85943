"""The kubernetes launcher backend against the real kube-apiserver and controller-manager
(tests/k8s_cluster.py). Pods select a node that does not exist, so they stay Pending: these
tests check what the API server and the garbage collector do with the backend's objects
(test_kubernetes_pods.py runs pods, on the test-only node agent)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from flotilla_common.tls import new_keypair
from flotilla_launcher.backends.base import (
    BackendError,
    ClusterConfig,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
)
from flotilla_launcher.backends.kubernetes import KubeBackend
from k8s_cluster import KubeControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.timeout(300)]


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first true value (awaited when it is a coroutine), polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _stopped(check: Awaitable[list[ProcessStatus]]) -> ProcessStatus | None:
    """The one status ``check`` gives, if it is not running."""
    (status,) = await check
    return None if status.running else status


@contextlib.asynccontextmanager
async def _running(backend: KubeBackend) -> AsyncIterator[KubeBackend]:
    """The backend started, and closed when the block ends."""
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


#: Keeps pods Pending even when the node agent (kube_node) runs in the same session.
NO_NODE = {"nodeSelector": {"flotilla.dev/test": "no-such-node"}}


def _cluster(
    name: str = "c1", owner: str = "alice@non-alpha.characters", **extra: Any
) -> ClusterSpec:
    extra.setdefault("scheduler_extra_pod_config", NO_NODE)
    extra.setdefault("worker_extra_pod_config", NO_NODE)
    cert, key = new_keypair(name)
    return ClusterSpec(
        name=name,
        owner=owner,
        config=ClusterConfig(worker_memory=2**28, scheduler_memory=2**28, extra=extra),
        tls_cert=cert,
        tls_key=key,
        token="t" * 32,
        api_url="http://gateway:8000/api",
    )


class _CountingTransport(httpx.AsyncBaseTransport):
    """Counts the backend's requests in flight (the watch aside) on the wire."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            return await self.inner.handle_async_request(request)
        self.in_flight += 1
        self.requests += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def token_file(kube: KubeControlPlane, tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(kube.admin_token)
    return path


@pytest.fixture
def make_backend(
    kube: KubeControlPlane, kube_namespace: str, token_file: Path
) -> Callable[..., KubeBackend]:
    """New backends of the test's namespace, as the cluster admin (each test closes its own)."""

    def make(**kwargs: Any) -> KubeBackend:
        return KubeBackend(
            kube_api_url=kube.api_url,
            ca_file=str(kube.ca_file),
            api_token_file=str(token_file),
            namespace=kube_namespace,
            instance="test",
            **kwargs,
        )

    return make


async def _start(backend: KubeBackend, cluster: ClusterSpec) -> dict[str, Any]:
    states = [s async for s in backend.start_cluster(cluster)]
    return states[-1]


async def _start_worker(backend: KubeBackend, worker: WorkerSpec) -> dict[str, Any]:
    states = [s async for s in backend.start_worker(worker)]
    return states[-1]


async def test_a_cluster_is_owned_objects_with_valid_labels(
    kube: KubeControlPlane, kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    api = kube.client()
    base = f"/api/v1/namespaces/{kube_namespace}"
    common = {"team": "climate", "example.org/tier": "gold"}
    async with _running(
        make_backend(common_labels=common, common_annotations={"cost-center": "42"})
    ) as backend:
        cluster = _cluster(worker_extra_pod_labels={"team": "ocean"})
        state = await _start(backend, cluster)
        worker = WorkerSpec(cluster, "w1", "10.0.0.9:8786")
        wstate = await _start_worker(backend, worker)
        owner = api.get(f"{base}/configmaps/flotilla-c1")
        uid = owner["metadata"]["uid"]
        assert owner["metadata"]["labels"]["example.org/tier"] == "gold"
        for path in (
            f"{base}/secrets/flotilla-c1",
            f"{base}/services/flotilla-c1",
            f"{base}/pods/{state['pod']}",
            f"{base}/pods/{wstate['pod']}",
        ):
            obj = api.get(path)
            meta = obj["metadata"]
            # The common labels on every object; a worker's own extra labels win.
            expected_team = "ocean" if path.endswith(wstate["pod"]) else "climate"
            assert meta["labels"]["team"] == expected_team, path
            assert meta["labels"]["example.org/tier"] == "gold", path
            assert meta["annotations"]["cost-center"] == "42", path
            assert meta["ownerReferences"][0]["uid"] == uid, path
            assert meta["ownerReferences"][0]["blockOwnerDeletion"] is True
            assert meta["labels"]["gateway.dask.org/instance"] == "test"
            assert meta["labels"]["gateway.dask.org/cluster"] == "c1"
            assert meta["labels"]["flotilla.dev/owner"].startswith("alice-non-alpha.characters-")
            assert meta["annotations"]["flotilla.dev/owner"] == "alice@non-alpha.characters"
        pod = api.get(f"{base}/pods/{wstate['pod']}")
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "dask-worker"
        assert pod["spec"]["restartPolicy"] == "Never"
        # Without a node the pod is Pending: running as far as the launcher can tell.
        statuses, workers = await backend.check([(cluster, state)], [(worker, wstate)])
        assert statuses[0].running and workers[0].running
        # No node ran them: the API server answers empty logs, named by process.
        logs = await backend.read_logs(cluster, state, 4096, 65536)
        assert logs == {"scheduler": "", "worker-w1": ""}


async def test_a_malformed_extra_config_is_a_backend_error_in_words(
    kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    async with _running(make_backend()) as backend:
        cluster = _cluster(
            "c2", scheduler_extra_container_config={"resources": {"limits": {"cpu": "lots"}}}
        )
        with pytest.raises(BackendError) as refused:
            await _start(backend, cluster)
        message = str(refused.value)
        assert "Kubernetes refused the Pod" in message and "cluster c2" in message
        assert "lots" in message or "quantities" in message
        assert "Traceback" not in message


async def test_stop_deletes_the_owner_and_the_garbage_collector_the_rest(
    kube: KubeControlPlane, kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    api = kube.client()
    base = f"/api/v1/namespaces/{kube_namespace}"
    async with _running(make_backend()) as backend:
        cluster = _cluster("c3")
        state = await _start(backend, cluster)
        wstates = [
            await _start_worker(backend, WorkerSpec(cluster, f"w{i}", "10.0.0.9:8786"))
            for i in range(3)
        ]
        await backend.stop_cluster(cluster, state)
        paths = [
            f"{base}/configmaps/flotilla-c3",
            f"{base}/secrets/flotilla-c3",
            f"{base}/services/flotilla-c3",
            f"{base}/pods/{state['pod']}",
            *(f"{base}/pods/{w['pod']}" for w in wstates),
        ]
        await _until(lambda: not any(api.exists(p) for p in paths), 60, "the garbage collector")
        await backend.stop_cluster(cluster, state)  # idempotent


async def test_the_watch_sees_a_deleted_worker_pod(
    kube: KubeControlPlane, kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    api = kube.client()
    backend = make_backend()
    changes = asyncio.Event()
    backend.on_change(changes.set)
    async with _running(backend):
        cluster = _cluster("c4")
        state = await _start(backend, cluster)
        worker = WorkerSpec(cluster, "w1", "10.0.0.9:8786")
        wstate = await _start_worker(backend, worker)
        changes.clear()
        api.delete(
            f"/api/v1/namespaces/{kube_namespace}/pods/{wstate['pod']}",
            {"gracePeriodSeconds": "0"},
        )
        await asyncio.wait_for(changes.wait(), 30)
        status = await _until(
            lambda: _stopped(backend.check_workers([(worker, wstate)])), 30, "the worker stopped"
        )
        assert "deleted" in status.reason
        (scheduler,) = await backend.check_clusters([(cluster, state)])
        assert scheduler.running
        # The scheduler pod deleted: the cluster fails with a reason.
        api.delete(
            f"/api/v1/namespaces/{kube_namespace}/pods/{state['pod']}",
            {"gracePeriodSeconds": "0"},
        )
        failed = await _until(
            lambda: _stopped(backend.check_clusters([(cluster, state)])), 30, "the cluster failed"
        )
        assert "scheduler" in failed.reason


async def test_a_new_backend_adopts_pods_and_deletes_a_duplicate(
    kube: KubeControlPlane, kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    api = kube.client()
    pods = f"/api/v1/namespaces/{kube_namespace}/pods"
    cluster = _cluster("c5")
    worker = WorkerSpec(cluster, "w1", "10.0.0.9:8786")
    async with _running(make_backend()) as first:
        state = await _start(first, cluster)
        wstate = await _start_worker(first, worker)
    # A duplicate of the worker's pod (a launcher that died between two creates).
    duplicate = api.get(f"{pods}/{wstate['pod']}")
    duplicate["metadata"] = {
        k: duplicate["metadata"][k] for k in ("labels", "annotations", "ownerReferences")
    } | {"name": "flotilla-c5-duplicate"}
    duplicate.pop("status", None)
    api.post(pods, duplicate)
    selector = "gateway.dask.org/cluster=c5"
    before = {p["metadata"]["name"] for p in api.get(pods, {"labelSelector": selector})["items"]}
    assert len(before) == 3

    async with _running(make_backend()) as second:
        assert await _start(second, cluster) == state
        assert await _start_worker(second, worker) == wstate
        await _until(
            lambda: not api.exists(f"{pods}/flotilla-c5-duplicate"), 30, "the duplicate's deletion"
        )
        after = {p["metadata"]["name"] for p in api.get(pods, {"labelSelector": selector})["items"]}
        assert after == {state["pod"], wstate["pod"]}


async def test_500_workers_keep_requests_in_flight_bounded(
    kube: KubeControlPlane, kube_namespace: str, make_backend: Callable[..., KubeBackend]
) -> None:
    transport = _CountingTransport(
        httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(kube.ca_file)))
    )
    async with _running(make_backend(transport=transport, max_concurrent_requests=8)) as backend:
        cluster = _cluster("c6")
        await _start(backend, cluster)
        before = transport.requests
        workers = [WorkerSpec(cluster, f"w{i}", "10.0.0.9:8786") for i in range(500)]
        states = await asyncio.gather(*(_start_worker(backend, w) for w in workers))
        assert len({s["pod"] for s in states}) == 500
        assert transport.requests - before >= 500
        assert transport.max_in_flight <= 8
        assert transport.max_in_flight >= 4  # they did overlap
        listing = kube.client().get(
            f"/api/v1/namespaces/{kube_namespace}/pods",
            {
                "labelSelector": (
                    "gateway.dask.org/cluster=c6,app.kubernetes.io/component=dask-worker"
                )
            },
        )
        assert len(listing["items"]) == 500


async def test_an_unschedulable_worker_fails_after_worker_start_timeout(
    make_backend: Callable[..., KubeBackend],
) -> None:
    async with _running(make_backend()) as backend:
        cluster = _cluster("c7", worker_start_timeout=1.0)
        await _start(backend, cluster)
        worker = WorkerSpec(cluster, "w1", "10.0.0.9:8786")
        wstate = await _start_worker(backend, worker)
        status = await _until(
            lambda: _stopped(backend.check_workers([(worker, wstate)])), 60, "the worker failed"
        )
        # The real kube-scheduler's words, after the backend's.
        assert "could not be scheduled within 1s: " in status.reason, status.reason
        assert "node" in status.reason
