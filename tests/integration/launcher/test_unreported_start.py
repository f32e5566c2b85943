"""A launcher SIGKILLed after starting a process but before the registry heard of it.

The registry double holds the report that carries the new process's checkpoint, so the
launcher dies with the process running and the record still saying CREATED. The next
launcher must adopt that process (not start a second one), or stop it if the cluster is
to stop meanwhile, so that nothing is duplicated or orphaned.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from flotilla.registry.v1 import internal_pb2, types_pb2
from flotilla_launcher import procfs

from .conftest import FakeRegistry, alive, wait_for
from .test_local_clusters import comm, wait_running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CREATED = types_pb2.OBSERVED_CREATED
STOPPED = types_pb2.OBSERVED_STOPPED


def leaders(cluster: str, worker: str | None = None) -> list[int]:
    """Live process-group leaders started for the cluster's scheduler or one worker."""
    found = procfs.find_by_environment({"DASK_GATEWAY_CLUSTER_NAME": cluster})
    return sorted(
        st.pid
        for st, env in found
        if st.pid == st.pgid and env.get("DASK_GATEWAY_WORKER_NAME") == worker
    )


def checkpoint_of(request: Any) -> dict[str, Any]:
    return json.loads(request.state_json) if request.state_json else {}


def scheduler_checkpoint(request: Any) -> bool:
    """The report that would tell the registry the scheduler's pid."""
    return isinstance(request, internal_pb2.ReportClusterRequest) and "pid" in checkpoint_of(
        request
    )


def worker_checkpoint(request: Any) -> bool:
    """The report that would tell the registry a worker's pid."""
    return isinstance(request, internal_pb2.ReportWorkerRequest) and "pid" in checkpoint_of(request)


async def kill_launcher_holding(registry: FakeRegistry, process: Any, what: str) -> dict[str, Any]:
    """Wait for the held report, SIGKILL the launcher; returns the unreported checkpoint."""
    request = await wait_for(lambda: registry.held[-1] if registry.held else None, 60, what)
    process.kill()
    registry.hold = None
    state = checkpoint_of(request)
    assert alive(state), "the process started before its report"
    return state


async def test_unreported_scheduler_is_adopted_not_started_twice(
    registry: FakeRegistry, launcher_process: Any, make_launcher: Any
) -> None:
    registry.hold = scheduler_checkpoint
    first = launcher_process()
    name = registry.add_cluster()
    state = await kill_launcher_holding(registry, first, "the scheduler's checkpoint report")
    assert registry.records[name].observed == CREATED
    assert leaders(name) == [state["pid"]]

    await make_launcher()
    await wait_running(registry, name)
    assert registry.state(name)["pid"] == state["pid"]
    assert leaders(name) == [state["pid"]]
    log = Path(registry.state(name)["log"])
    assert log.read_text().count("Scheduler at:") == 1

    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert leaders(name) == [] and not alive(state)


async def test_unreported_worker_is_adopted_not_started_twice(
    registry: FakeRegistry, launcher_process: Any, make_launcher: Any
) -> None:
    first = launcher_process()
    name = registry.add_cluster()
    beat = await wait_running(registry, name)
    registry.hold = worker_checkpoint
    token = registry.records[name].token
    assert await comm(beat["api_address"], {"op": "scale", "count": 1}, token) == 200
    state = await kill_launcher_holding(registry, first, "the worker's checkpoint report")
    [worker] = registry.records[name].workers
    assert worker.observed == CREATED
    assert leaders(name, worker.name) == [state["pid"]]

    await make_launcher()
    await wait_for(
        lambda: registry.worker(name, worker.name).state_json,
        30,
        "the new launcher to report the worker",
    )
    assert checkpoint_of(registry.worker(name, worker.name))["pid"] == state["pid"]
    await wait_for(
        lambda: (
            (b := registry.last_heartbeat(name)) is not None
            and b["active_workers"] == [worker.name]
        ),
        60,
        "the worker active in its scheduler",
    )
    assert leaders(name, worker.name) == [state["pid"]]
    assert len(registry.records[name].workers) == 1

    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state) and leaders(name) == []


async def test_unreported_scheduler_of_a_stopped_cluster_is_stopped(
    registry: FakeRegistry, launcher_process: Any, make_launcher: Any
) -> None:
    registry.hold = scheduler_checkpoint
    first = launcher_process()
    name = registry.add_cluster()
    state = await kill_launcher_holding(registry, first, "the scheduler's checkpoint report")
    registry.set_target(name, types_pb2.TARGET_STOPPED)  # while no launcher runs

    await make_launcher()
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state) and leaders(name) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
async def test_unreported_scheduler_of_another_user_is_adopted(
    registry: FakeRegistry, launcher_process: Any, make_launcher: Any, launcher_config: Any
) -> None:
    nobody = pwd.getpwnam("nobody")
    # Every directory above the cluster's must be traversable by the owner.
    root = Path(tempfile.mkdtemp(prefix="flotilla-runas-"))
    root.chmod(0o711)
    try:
        run_as = ["c.LocalBackend.run_as = 'auto'", f"c.LocalBackend.clusters_directory = '{root}'"]
        registry.hold = scheduler_checkpoint
        first = launcher_process(*run_as)
        # A stand-in scheduler from the base system (see test_runs_as_the_owner_when_root).
        name = registry.add_cluster(
            owner="nobody", scheduler_cmd=["/bin/sh", "-c", "exec sleep 60"]
        )
        state = await kill_launcher_holding(registry, first, "the scheduler's checkpoint report")
        await wait_for(lambda: procfs.read_uid(state["pid"]) == nobody.pw_uid, 10, "uid switch")

        launcher_config.LocalBackend.run_as = "auto"
        launcher_config.LocalBackend.clusters_directory = str(root)
        await make_launcher(launcher_config)
        await wait_for(lambda: registry.state(name).get("pid"), 30, "the adopted checkpoint")
        assert registry.state(name)["pid"] == state["pid"]
        assert registry.state(name)["user"] == "nobody"
        assert leaders(name) == [state["pid"]]

        registry.set_target(name, types_pb2.TARGET_STOPPED)
        await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
        assert not alive(state) and leaders(name) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
