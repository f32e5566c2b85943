"""The kubernetes backend's pod cache: list, then watch events, then a relist after the
watch expired (410 Gone), over httpx.MockTransport (no API server: the integration tests
in tests/integration/k8s run the same against the real one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.kubernetes import KubeBackend


def _pod(name: str, rv: int, phase: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(rv), "labels": {}},
        "status": {"phase": phase},
    }


class _Server:
    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            self.watches += 1
            if self.watches == 1:
                assert request.url.params["resourceVersion"] == "10"
                events = [
                    {"type": "ADDED", "object": _pod("b", 11)},
                    {"type": "DELETED", "object": _pod("a", 12)},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
                    {"type": "ERROR", "object": {"kind": "Status", "code": 410}},
                ]
                body = "".join(json.dumps(e) + "\n" for e in events)
                return httpx.Response(200, content=body.encode())
            assert request.url.params["resourceVersion"] == "20"
            await asyncio.sleep(3600)
        self.lists += 1
        if self.lists <= 2:  # start()'s probe, then the first list
            items = [_pod("a", 5)]
            return httpx.Response(200, json={"metadata": {"resourceVersion": "10"}, "items": items})
        items = [_pod("b", 11), _pod("c", 19, "Failed")]
        return httpx.Response(200, json={"metadata": {"resourceVersion": "20"}, "items": items})


async def test_the_cache_follows_the_watch_and_relists_after_410() -> None:
    server = _Server()
    backend = KubeBackend(
        transport=httpx.MockTransport(server),
        kube_api_url="https://kube.invalid",
        api_token_file="",
        namespace="ns",
    )
    changes: list[int] = []
    backend.on_change(lambda: changes.append(1))
    cluster = ClusterSpec("c1", "alice", ClusterConfig(), "C", "K", "t", "http://gw/api")
    workers = [(WorkerSpec(cluster, n, "a:1"), {"pod": n}) for n in ("a", "b", "c")]
    try:
        await backend.start()
        for _ in range(200):
            if server.watches >= 2:
                break
            await asyncio.sleep(0.01)
        assert server.lists == 3 and server.watches == 2
        a, b, c = await backend.check_workers(workers)
        assert not a.running and "deleted" in a.reason
        assert b.running
        assert not c.running and "failed" in c.reason
        assert len(changes) >= 4  # the lists and the events
    finally:
        await backend.close()
