"""The kubernetes backend's pods running, on the test-only node agent (tests/k8s_node_agent.py,
processes of the project's venv as the image ``flotilla-test/dask:dev``) bound by the real
kube-scheduler: what the backend reports from the pods' real status, and their logs.

The containers run small Python programs given as the cluster's commands (the backend
appends its flags, which they print): a real scheduler would need the gateway's API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flotilla_common.tls import new_keypair
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec, ProcessStatus, WorkerSpec
from flotilla_launcher.backends.kubernetes import KubeBackend
from k8s_cluster import KubeControlPlane
from k8s_node_fixture import DASK_IMAGE, KubeNode

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.timeout(300)]

SLEEPER = "import sys, time; print('started', ' '.join(sys.argv[1:]), flush=True); time.sleep(600)"


def _cluster(name: str, worker_code: str = SLEEPER, **extra: Any) -> ClusterSpec:
    cert, key = new_keypair(name)
    return ClusterSpec(
        name=name,
        owner="Alice",
        config=ClusterConfig(
            scheduler_cmd=("python", "-c", SLEEPER),
            worker_cmd=("python", "-c", worker_code),
            worker_memory=2**28,
            scheduler_memory=2**28,
            extra={"image": DASK_IMAGE, **extra},
        ),
        tls_cert=cert,
        tls_key=key,
        token="t" * 32,
        api_url="http://gateway:8000/api",
    )


@pytest.fixture
def backend(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str, tmp_path: Path
) -> KubeBackend:
    token = tmp_path / "token"
    token.write_text(kube.admin_token)
    return KubeBackend(
        kube_api_url=kube.api_url,
        ca_file=str(kube.ca_file),
        api_token_file=str(token),
        namespace=kube_namespace,
        instance="pods",
    )


async def _status(
    check: Callable[[], Any], predicate: Callable[[ProcessStatus], bool], timeout: float
) -> ProcessStatus:
    deadline = time.monotonic() + timeout
    while True:
        (status,) = await check()
        if predicate(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def _up(backend: KubeBackend, cluster: ClusterSpec) -> dict[str, Any]:
    return [s async for s in backend.start_cluster(cluster)][-1]


async def _worker(backend: KubeBackend, worker: WorkerSpec) -> dict[str, Any]:
    return [s async for s in backend.start_worker(worker)][-1]


async def test_running_pods_and_their_logs(
    kube: KubeControlPlane, kube_namespace: str, backend: KubeBackend
) -> None:
    await backend.start()
    try:
        cluster = _cluster("r1")
        state = await _up(backend, cluster)
        worker = WorkerSpec(cluster, "w1", "127.0.0.1:8786")
        wstate = await _worker(backend, worker)
        api = kube.client()
        pod = api.wait_for(
            f"/api/v1/namespaces/{kube_namespace}/pods/{state['pod']}",
            lambda p: p.get("status", {}).get("phase") == "Running",
            60,
            "the scheduler pod Running",
        )
        pod_ip = pod["status"]["podIP"]
        api.wait_for(
            f"/api/v1/namespaces/{kube_namespace}/pods/{wstate['pod']}",
            lambda p: p.get("status", {}).get("phase") == "Running",
            60,
            "the worker pod Running",
        )
        schedulers, workers = await backend.check([(cluster, state)], [(worker, wstate)])
        assert schedulers[0].running and workers[0].running

        deadline = time.monotonic() + 30
        logs: dict[str, str] = {}
        while time.monotonic() < deadline:
            logs = await backend.read_logs(cluster, state, 4096, 65536)
            if "started" in logs.get("scheduler", "") and "started" in logs.get("worker-w1", ""):
                break
            await asyncio.sleep(0.2)
        # $(POD_IP) was expanded in the scheduler's command line; fixed ports.
        assert f"--host {pod_ip}" in logs["scheduler"]
        assert f"--dashboard-address {pod_ip}:8787" in logs["scheduler"]
        assert "tls://127.0.0.1:8786" in logs["worker-w1"]
        await backend.stop_cluster(cluster, state)
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("code", "extra", "words"),
    [
        ("import sys; sys.exit(3)", {}, "worker w1 exited with code 3"),
        (
            "import time; x = ' ' * (700 * 2**20); time.sleep(60)",
            {},
            "worker w1 exceeded its memory limit of 256 MiB (OOMKilled)",
        ),
        (SLEEPER, {"image": "nowhere/none:1"}, "image nowhere/none:1 could not be pulled"),
    ],
    ids=["exit-code", "oom", "image"],
)
async def test_why_a_worker_ended_in_words(
    backend: KubeBackend, code: str, extra: dict[str, Any], words: str
) -> None:
    await backend.start()
    try:
        cluster = _cluster(f"e-{len(words)}", worker_code=code)
        state = await _up(backend, cluster)
        # Only the worker's image differs (the scheduler keeps the test image).
        worker_cluster = _cluster(cluster.name, worker_code=code, **extra)
        worker = WorkerSpec(worker_cluster, "w1", "127.0.0.1:8786")
        wstate = await _worker(backend, worker)
        status = await _status(
            lambda: backend.check_workers([(worker, wstate)]), lambda s: not s.running, 90
        )
        assert not status.running
        assert words in status.reason, status.reason
        await backend.stop_cluster(cluster, state)
    finally:
        await backend.close()
