"""The launcher sends the output of real scheduler and worker processes to the registry:
on request while the cluster runs, and when it has stopped."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from flotilla.registry.v1 import types_pb2

from .conftest import FakeRegistry, wait_for
from .test_local_clusters import comm, wait_running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STOPPED = types_pb2.OBSERVED_STOPPED


async def test_logs_of_a_failed_scheduler_reach_the_registry(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    await make_launcher()
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    name = registry.add_cluster(scheduler_cmd=[sys.executable, "-c", code])
    await wait_for(lambda: registry.records[name].observed == STOPPED, 30, "cluster stopped")
    logs = registry.logs[name]
    assert list(logs) == ["scheduler"]
    assert "to stdout" in logs["scheduler"] and "to stderr" in logs["scheduler"]


async def test_logs_of_a_running_cluster_on_request_and_after_it_stopped(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    await make_launcher()
    name = registry.add_cluster()
    beat = await wait_running(registry, name)
    token = registry.records[name].token
    assert await comm(beat["api_address"], {"op": "scale", "count": 1}, token) == 200
    await wait_for(
        lambda: (b := registry.last_heartbeat(name)) is not None and len(b["active_workers"]) == 1,
        90,
        "one active worker",
    )
    [worker] = registry.last_heartbeat(name)["active_workers"]  # type: ignore[index]

    request = registry.request_logs(name)
    await wait_for(lambda: registry.logs_answered.get(name) == request, 30, "the logs answer")
    logs = registry.logs[name]
    assert list(logs) == ["scheduler", f"worker-{worker}"]
    assert "Scheduler at:" in logs["scheduler"]
    assert "Registered to:" in logs[f"worker-{worker}"]

    registry.logs.clear()
    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    final = registry.logs[name]
    assert set(final) == {"scheduler", f"worker-{worker}"}
    # The scheduler's output now includes its shutdown.
    assert "Scheduler closing" in final["scheduler"] or "End scheduler" in final["scheduler"]
