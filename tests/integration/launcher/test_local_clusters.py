"""The launcher with the real local backend, real ``dask scheduler``/``dask worker`` processes
running the Flotilla preload, against the registry doubles of conftest.py."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from flotilla.registry.v1 import types_pb2
from flotilla_launcher import procfs
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec
from flotilla_launcher.backends.local import LocalBackend
from traitlets.config import Config

from .conftest import FakeRegistry, alive, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STOPPED = types_pb2.OBSERVED_STOPPED


async def comm(api_address: str, body: Any, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api_address}/api/comm", data=json.dumps(body), headers=headers) as r,
    ):
        return r.status


async def wait_running(registry: FakeRegistry, name: str) -> dict[str, Any]:
    """Wait for the first heartbeat (failing at once on a failure report); returns it."""

    def beat_or_failure() -> Any:
        for report in registry.cluster_reports:
            if report.name == name and report.failure_reason:
                raise AssertionError(f"cluster {name} failed: {report.failure_reason}")
        return registry.last_heartbeat(name)

    beat = await wait_for(beat_or_failure, 60, f"a heartbeat of {name}")
    assert registry.records[name].observed == types_pb2.OBSERVED_RUNNING
    return beat  # type: ignore[no-any-return]


async def test_cluster_scale_and_stop(registry: FakeRegistry, make_launcher: Any) -> None:
    await make_launcher()
    name = registry.add_cluster()
    beat = await wait_running(registry, name)
    token = registry.records[name].token
    assert beat["scheduler_address"].startswith("tls://127.0.0.1:")
    assert beat["dashboard_address"].startswith("http://127.0.0.1:")
    assert beat["api_address"].startswith("http://127.0.0.1:")
    assert beat["count"] == 0 and beat["active_workers"] == []
    state = registry.state(name)
    workdir = Path(state["workdir"])
    assert alive(state)
    assert (workdir / ".certs" / "dask.pem").stat().st_mode & 0o777 == 0o600

    api = beat["api_address"]
    async with aiohttp.ClientSession() as session, session.get(f"{api}/api/health") as r:
        assert r.status == 200
    assert await comm(api, {"op": "scale", "count": 2}, None) == 403
    assert await comm(api, {"op": "scale", "count": 2}, "wrong") == 403
    assert await comm(api, {"op": "nope"}, token) == 422

    assert await comm(api, {"op": "scale", "count": 2}, token) == 200

    def two_active() -> bool:
        beat = registry.last_heartbeat(name)
        return beat is not None and len(beat["active_workers"]) == 2

    await wait_for(two_active, 90, "two active workers in a heartbeat")
    workers = {w.name: w for w in registry.records[name].workers}
    assert sorted(workers) == sorted(registry.last_heartbeat(name)["active_workers"])  # type: ignore[index]
    worker_states = {n: json.loads(w.state_json) for n, w in workers.items()}
    assert all(alive(s) for s in worker_states.values())

    # Scale down: the scheduler retires one worker by name; its process ends.
    assert await comm(api, {"op": "scale", "count": 1}, token) == 200
    await wait_for(
        lambda: any(len(b["closed_workers"]) == 1 for n, b in registry.heartbeats if n == name),
        60,
        "a closed worker",
    )
    closed = next(b["closed_workers"][0] for n, b in registry.heartbeats if b["closed_workers"])
    await wait_for(lambda: not alive(worker_states[closed]), 30, "the retired worker to exit")
    await wait_for(
        lambda: registry.worker(name, closed).observed == STOPPED, 30, "worker reported stopped"
    )

    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state)
    assert not any(alive(s) for s in worker_states.values())
    assert not procfs.group_members(state["pid"])
    assert all(w.observed == STOPPED for w in registry.records[name].workers)
    # Logs stay, TLS material goes.
    assert (workdir / "logs" / "scheduler.log").stat().st_size > 0
    for worker in worker_states:
        assert (workdir / "logs" / f"worker-{worker}.log").exists()
    assert not (workdir / ".certs").exists()


async def test_scheduler_that_exits_is_reported(registry: FakeRegistry, make_launcher: Any) -> None:
    await make_launcher()
    code = "import sys; print('secret log line'); sys.exit(3)"
    name = registry.add_cluster(scheduler_cmd=[sys.executable, "-c", code])
    report = await wait_for(
        lambda: next((r for r in registry.cluster_reports if r.failure_reason), None),
        30,
        "a failure report",
    )
    assert "exited with code 3" in report.failure_reason
    log = Path(registry.state(name)["workdir"]) / "logs" / "scheduler.log"
    assert str(log) in report.failure_reason
    assert "secret log line" not in report.failure_reason
    assert "secret log line" in log.read_text()
    assert registry.records[name].target == types_pb2.TARGET_FAILED
    await wait_for(lambda: registry.records[name].observed == STOPPED, 30, "cluster stopped")


async def test_scheduler_command_that_cannot_start(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    await make_launcher()
    name = registry.add_cluster(scheduler_cmd=["/nonexistent/dask-scheduler"])
    report = await wait_for(
        lambda: next((r for r in registry.cluster_reports if r.failure_reason), None),
        30,
        "a failure report",
    )
    assert "cannot start the scheduler" in report.failure_reason
    assert "/nonexistent/dask-scheduler" in report.failure_reason
    await wait_for(lambda: registry.records[name].observed == STOPPED, 30, "cluster stopped")


async def test_missing_unix_user_fails_the_cluster(
    registry: FakeRegistry, make_launcher: Any, launcher_config: Config
) -> None:
    launcher_config.LocalBackend.run_as = "user"
    await make_launcher(launcher_config)
    name = registry.add_cluster(owner="flotilla-no-such-user")
    report = await wait_for(
        lambda: next((r for r in registry.cluster_reports if r.failure_reason), None),
        30,
        "a failure report",
    )
    assert "Unix user 'flotilla-no-such-user' does not exist" in report.failure_reason
    await wait_for(lambda: registry.records[name].observed == STOPPED, 30, "cluster stopped")


async def test_restarted_launcher_adopts_the_running_scheduler(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    first = await make_launcher()
    name = registry.add_cluster()
    await wait_running(registry, name)
    state = registry.state(name)
    await first.stop()  # the launcher goes away; the cluster must not
    assert alive(state)
    reports_before = len(registry.cluster_reports)

    second = await make_launcher()
    await wait_for(
        lambda: second._tracked.get(name) is not None and second._tracked[name].checked,
        30,
        "the new launcher to look at the cluster",
    )
    assert registry.state(name) == state and alive(state)
    assert len(registry.cluster_reports) == reports_before  # nothing restarted or failed
    log = Path(state["workdir"]) / "logs" / "scheduler.log"
    assert log.read_text().count("Scheduler at:") == 1

    # The adopted cluster is fully managed: it scales and stops.
    beat = registry.last_heartbeat(name)
    assert beat is not None
    token = registry.records[name].token
    assert await comm(beat["api_address"], {"op": "scale", "count": 1}, token) == 200
    await wait_for(
        lambda: (b := registry.last_heartbeat(name)) is not None and len(b["active_workers"]) == 1,
        90,
        "one active worker",
    )
    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state)


async def test_exited_adopted_scheduler_is_reported(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    first = await make_launcher()
    name = registry.add_cluster()
    await wait_running(registry, name)
    state = registry.state(name)
    await first.stop()
    os.killpg(state["pid"], signal.SIGKILL)
    await wait_for(lambda: not alive(state), 30, "the scheduler to die")
    await make_launcher()
    report = await wait_for(
        lambda: next((r for r in registry.cluster_reports if r.failure_reason), None),
        30,
        "a failure report",
    )
    assert "scheduler" in report.failure_reason and "scheduler.log" in report.failure_reason
    await wait_for(lambda: registry.records[name].observed == STOPPED, 30, "cluster stopped")


async def test_idle_timeout_deletes_the_cluster(registry: FakeRegistry, make_launcher: Any) -> None:
    await make_launcher()
    name = registry.add_cluster(idle_timeout=1.0)
    await wait_running(registry, name)
    await wait_for(lambda: name in registry.deletes, 30, "the idle DELETE")
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")


async def test_adapt_minimum_requests_workers(registry: FakeRegistry, make_launcher: Any) -> None:
    await make_launcher()
    name = registry.add_cluster()
    beat = await wait_running(registry, name)
    token = registry.records[name].token
    body = {"op": "adapt", "minimum": 1, "maximum": 3, "active": True}
    assert await comm(beat["api_address"], body, token) == 200
    await wait_for(
        lambda: (b := registry.last_heartbeat(name)) is not None and b["count"] == 1,
        30,
        "count 1 from adaptive",
    )
    await wait_for(
        lambda: (b := registry.last_heartbeat(name)) is not None and len(b["active_workers"]) == 1,
        90,
        "one active worker",
    )


async def test_stop_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    cfg = Config()
    cfg.LocalBackend.clusters_directory = str(tmp_path)
    backend = LocalBackend(config=cfg)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        st = procfs.read_stat(other.pid)
        assert st is not None
        spec = ClusterSpec("c1", "alice", ClusterConfig(), "", "", "", "")
        checkpoint = {"pid": other.pid, "start_time": st.start_time + 1}
        await backend.stop_cluster(spec, checkpoint)
        assert other.poll() is None
        [status] = await backend.check_clusters([(spec, checkpoint)])
        assert not status.running
    finally:
        other.kill()
        other.wait()


async def test_launcher_process_exits_on_sigterm_and_leaves_clusters_running(
    registry: FakeRegistry, make_launcher: Any, launcher_process: Any
) -> None:
    process = launcher_process()
    name = registry.add_cluster()
    await wait_running(registry, name)
    state = registry.state(name)
    process.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: process.proc.poll() is not None, 30, "the launcher to exit")
    assert process.proc.returncode == 0, process.log_path.read_text()
    assert alive(state)  # the cluster outlives its launcher
    # A new launcher takes over and stops it when the registry says so.
    await make_launcher()
    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
async def test_runs_as_the_owner_when_root(
    registry: FakeRegistry, make_launcher: Any, launcher_config: Config
) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    # Every directory above the cluster's must be traversable by the owner.
    root = Path(tempfile.mkdtemp(prefix="flotilla-runas-"))
    root.chmod(0o711)
    try:
        launcher_config.LocalBackend.run_as = "auto"
        launcher_config.LocalBackend.clusters_directory = str(root / "clusters")
        await make_launcher(launcher_config)
        # A stand-in scheduler from the base system: this venv's interpreter may live
        # where other accounts cannot reach it. The appended dask options go to $0, $1...
        name = registry.add_cluster(
            owner="nobody", scheduler_cmd=["/bin/sh", "-c", "exec sleep 60"]
        )
        state = await wait_for(lambda: registry.state(name).get("pid") and registry.state(name))
        # The uid switches right after the spawn (see _BECOME in local.py).
        await wait_for(lambda: procfs.read_uid(state["pid"]) == nobody.pw_uid, 10, "uid switch")
        assert alive(state)
        assert procfs.read_uid(state["pid"]) == nobody.pw_uid
        environ = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
        assert b"USER=nobody" in environ and f"HOME={nobody.pw_dir}".encode() in environ
        workdir = Path(state["workdir"])
        key = workdir / ".certs" / "dask.pem"
        assert key.stat().st_uid == nobody.pw_uid and key.stat().st_mode & 0o777 == 0o600
        assert (workdir / "logs" / "scheduler.log").stat().st_uid == nobody.pw_uid
        registry.set_target(name, types_pb2.TARGET_STOPPED)
        await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
        assert not alive(state)
        assert not key.exists() and (workdir / "logs" / "scheduler.log").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ppid(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _safe_ppid(int(e)) == pid]


def _safe_ppid(pid: int) -> int:
    try:
        return _ppid(pid)
    except (OSError, IndexError, ValueError):
        return -1


async def test_schedulers_and_workers_are_forked(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    reconciler = await make_launcher()
    server = reconciler.backend.forkserver
    assert server is not None and server.ready
    name = registry.add_cluster()
    beat = await wait_running(registry, name)
    state = registry.state(name)
    assert _ppid(state["pid"]) == server.pid, "the scheduler is a child of the fork server"
    assert Path(f"/proc/{state['pid']}/comm").read_text().strip() == "dask-scheduler"
    cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"scheduler", b"--protocol"], "ps shows the dask command"

    token = registry.records[name].token
    assert await comm(beat["api_address"], {"op": "scale", "count": 1}, token) == 200

    def one_active() -> bool:
        beat = registry.last_heartbeat(name)
        return beat is not None and len(beat["active_workers"]) == 1

    await wait_for(one_active, 90, "an active worker")
    [worker] = registry.records[name].workers
    nanny = json.loads(worker.state_json)["pid"]
    assert _ppid(nanny) == server.pid, "the worker's nanny is forked by the server"
    # ... and the nanny forks its worker process (no new interpreter either).
    [process] = await wait_for(lambda: _children(nanny), 30, "the nanny's worker process")
    assert Path(f"/proc/{process}/exe").resolve() == Path(f"/proc/{nanny}/exe").resolve()
    assert b"multiprocessing" not in Path(f"/proc/{process}/cmdline").read_bytes()
    # It dies of SIGTERM like an exec'd one: no handler inherited from its nanny.
    status = Path(f"/proc/{process}/status").read_text()
    caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    assert not caught & (1 << (signal.SIGTERM - 1)), "SIGTERM is not caught"

    registry.set_target(name, types_pb2.TARGET_STOPPED)
    await wait_for(lambda: registry.records[name].observed == STOPPED, 60, "cluster stopped")
    assert not alive(state)
    assert not procfs.group_members(nanny)


async def test_live_schedulers_are_reported_and_stopped_ones_are_not(
    registry: FakeRegistry, make_launcher: Any
) -> None:
    """Each status check tells the registry which schedulers are alive (a busy one keeps
    its cluster); one stopped by SIGSTOP is not among them: it cannot run."""
    await make_launcher()
    busy, stopped = registry.add_cluster(), registry.add_cluster()
    await wait_running(registry, busy)
    await wait_running(registry, stopped)
    both = ("local", sorted([busy, stopped]))

    def last_report() -> tuple[str, list[str]] | None:
        return (registry.alive[-1][0], sorted(registry.alive[-1][1])) if registry.alive else None

    await wait_for(lambda: last_report() == both, 30, "a report of both alive")
    pid = registry.state(stopped)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: last_report() == ("local", [busy]), 30, "only one alive")
        assert registry.records[stopped].target == types_pb2.TARGET_RUNNING  # not exited
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_for(lambda: last_report() == both, 30, "both alive again")
