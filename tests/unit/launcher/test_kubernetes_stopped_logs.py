"""The kubernetes backend reads a cluster's pod logs before stop_cluster deletes its pods
and hands them to the next read_logs of that cluster, keeping a bounded number
(httpx.MockTransport: no API server)."""

from __future__ import annotations

import asyncio

import httpx
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec
from flotilla_launcher.backends.kubernetes import KubeBackend


class _Server:
    """Pods that answer their log until deleted; every request in order."""

    def __init__(self) -> None:
        self.pods: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.params.get("watch"):
            await asyncio.sleep(3600)
        self.calls.append((request.method, path))
        if request.method == "DELETE":
            self.pods.discard(path.rsplit("/", 1)[1])
            return httpx.Response(200, json={})
        if path.endswith("/log"):
            pod = path.rsplit("/", 2)[1]
            if pod not in self.pods:
                return httpx.Response(404, json={"message": f"pods {pod!r} not found"})
            return httpx.Response(200, text=f"log of {pod}\n")
        return httpx.Response(200, json={"metadata": {"resourceVersion": "1"}, "items": []})


def _cluster(name: str) -> ClusterSpec:
    return ClusterSpec(name, "alice", ClusterConfig(), "C", "K", "t", "http://gw/api")


async def test_stop_reads_the_logs_first_and_read_logs_returns_them_once() -> None:
    server = _Server()
    backend = KubeBackend(
        transport=httpx.MockTransport(server),
        kube_api_url="https://kube.invalid",
        api_token_file="",
        namespace="ns",
        stopped_logs_kept=1,
    )
    try:
        await backend.start()
        server.pods |= {"s1", "s2"}
        await backend.stop_cluster(_cluster("c1"), {"pod": "s1"})
        log_call = server.calls.index(("GET", "/api/v1/namespaces/ns/pods/s1/log"))
        delete_call = server.calls.index(("DELETE", "/api/v1/namespaces/ns/pods/s1"))
        assert log_call < delete_call
        assert "s1" not in server.pods

        logs = await backend.read_logs(_cluster("c1"), {"pod": "s1"}, 1024, 4096)
        assert logs == {"scheduler": "log of s1\n"}
        # Handed over once: the next read asks the API server, where the pod is gone.
        assert await backend.read_logs(_cluster("c1"), {"pod": "s1"}, 1024, 4096) == {}

        # At most stopped_logs_kept clusters wait: the oldest is dropped.
        server.pods |= {"s1"}
        await backend.stop_cluster(_cluster("c1"), {"pod": "s1"})
        await backend.stop_cluster(_cluster("c2"), {"pod": "s2"})
        assert await backend.read_logs(_cluster("c1"), {"pod": "s1"}, 1024, 4096) == {}
        logs = await backend.read_logs(_cluster("c2"), {"pod": "s2"}, 1024, 4096)
        assert logs == {"scheduler": "log of s2\n"}
    finally:
        await backend.close()
