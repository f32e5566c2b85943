"""How the kubernetes backend turns the API server's answers into errors: refusals (4xx)
become BackendError in words, a gone object is no error to a delete, 5xx and no answer
are KubeUnavailable (retried by the reconciler). Over httpx.MockTransport."""

from __future__ import annotations

import httpx
import pytest
from flotilla_launcher.backends.base import BackendError, ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.kubernetes import KubeBackend, KubeUnavailable

CLUSTER = ClusterSpec("c1", "alice", ClusterConfig(), "C", "K", "t", "http://gw/api")
WORKER = WorkerSpec(CLUSTER, "w1", "a:1")


def _backend(status: int, message: str = "") -> KubeBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"kind": "Status", "message": message})

    return KubeBackend(
        transport=httpx.MockTransport(handler),
        kube_api_url="https://kube.invalid",
        api_token_file="",
        namespace="ns",
    )


async def test_a_gone_pod_is_no_error_to_stop() -> None:
    backend = _backend(404, "not found")
    await backend.stop_worker(WORKER, {"pod": "p"})
    await backend.close()


async def test_a_refused_delete_says_so() -> None:
    backend = _backend(403, 'pods "p" is forbidden: User "x" cannot delete resource')
    with pytest.raises(BackendError, match="Kubernetes refused to delete pods/p in namespace ns"):
        await backend.stop_worker(WORKER, {"pod": "p"})
    await backend.close()


async def test_a_server_error_is_retried_not_shown() -> None:
    backend = _backend(503, "etcd unavailable")
    with pytest.raises(KubeUnavailable):
        await backend.stop_worker(WORKER, {"pod": "p"})
    await backend.close()


async def test_an_api_server_that_does_not_answer_stops_the_launcher_in_one_line() -> None:
    backend = _backend(401, "Unauthorized")
    with pytest.raises(SystemExit, match="does not answer as needed: Unauthorized"):
        await backend.start()
    await backend.close()
