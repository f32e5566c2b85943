"""The kubernetes backend's semaphore: 500 start_worker calls at once keep at most
c.KubeBackend.max_concurrent_requests requests in flight. A unit test of the semaphore
over httpx.MockTransport, not a stand-in for the API server (tests/integration/k8s has
those against the real one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.kubernetes import KubeBackend


class _Counting:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.created: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            await asyncio.sleep(3600)  # a watch with no events until the test ends
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            path = request.url.path
            if request.method == "GET" and path.endswith("/pods"):
                return httpx.Response(200, json={"metadata": {"resourceVersion": "1"}, "items": []})
            if request.method == "GET" and "/configmaps/" in path:
                return httpx.Response(200, json={"metadata": {"name": "o", "uid": "u-1"}})
            if request.method == "POST" and path.endswith("/pods"):
                body: dict[str, Any] = json.loads(request.content)
                self.created.append(body["metadata"]["name"])
                body["metadata"]["resourceVersion"] = str(len(self.created) + 1)
                return httpx.Response(201, json=body)
            return httpx.Response(404, json={"message": "not here"})
        finally:
            self.in_flight -= 1


async def test_500_workers_keep_requests_in_flight_bounded() -> None:
    handler = _Counting()
    backend = KubeBackend(
        transport=httpx.MockTransport(handler),
        kube_api_url="https://kube.invalid",
        api_token_file="",
        namespace="ns",
        max_concurrent_requests=16,
    )
    cluster = ClusterSpec(
        name="c1",
        owner="alice",
        config=ClusterConfig(),
        tls_cert="C",
        tls_key="K",
        token="t",
        api_url="http://gw/api",
    )

    async def start(i: int) -> list[dict[str, Any]]:
        return [
            s async for s in backend.start_worker(WorkerSpec(cluster, f"w{i}", "10.0.0.1:8786"))
        ]

    try:
        results = await asyncio.gather(*(start(i) for i in range(500)))
    finally:
        await backend.close()
    assert len(set(handler.created)) == 500
    assert all(r[-1]["pod"].endswith(f"-worker-w{i}") for i, r in enumerate(results))
    assert handler.max_in_flight <= 16
    assert backend.max_in_flight <= 16
    assert handler.max_in_flight >= 8  # they did run concurrently
