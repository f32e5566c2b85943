"""Checkpoint adoption logic: pid plus start time identifies a process (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

from flotilla_launcher import procfs
from flotilla_launcher.backends.local import LocalBackend
from traitlets.config import Config


def write_stat(proc: Path, pid: int, comm: str, state: str, pgid: int, start: int) -> None:
    fields = [state, "1", str(pgid), str(pgid)] + ["0"] * 15 + [str(start)] + ["0"] * 30
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (proc / str(pid) / "status").write_text("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n")


def test_parse_stat_handles_parentheses_and_spaces_in_the_name() -> None:
    fields = ["S", "1", "77", "77"] + ["0"] * 15 + ["123456"] + ["0"] * 30
    st = procfs.parse_stat(f"42 (dask (sched) x) {' '.join(fields)}")
    assert (st.pid, st.state, st.pgid, st.start_time) == (42, "S", 77, 123456)
    assert st.alive


def test_same_process_requires_matching_start_time_and_not_zombie(tmp_path: Path) -> None:
    write_stat(tmp_path, 10, "dask", "S", 10, 500)
    write_stat(tmp_path, 11, "dask", "Z", 11, 600)
    proc = str(tmp_path)
    assert procfs.same_process(10, 500, proc=proc)
    assert not procfs.same_process(10, 501, proc=proc)  # pid reused by another process
    assert not procfs.same_process(11, 600, proc=proc)  # exited, not reaped
    assert not procfs.same_process(12, 500, proc=proc)  # gone
    assert procfs.same_process(10, 500, uid=1000, proc=proc)
    assert not procfs.same_process(10, 500, uid=0, proc=proc)  # someone else's process


def test_group_members_skips_zombies_and_other_groups(tmp_path: Path) -> None:
    write_stat(tmp_path, 10, "leader", "Z", 10, 1)
    write_stat(tmp_path, 20, "child", "S", 10, 2)
    write_stat(tmp_path, 30, "other", "S", 30, 3)
    (tmp_path / "self").mkdir()
    assert procfs.group_members(10, proc=str(tmp_path)) == [20]


def test_real_proc_identifies_this_process() -> None:
    st = procfs.read_stat(os.getpid())
    assert st is not None and st.alive
    assert procfs.same_process(os.getpid(), st.start_time, uid=os.getuid())
    assert not procfs.same_process(os.getpid(), st.start_time + 1)


async def test_status_of_checkpoints() -> None:
    backend = LocalBackend(config=Config())
    st = procfs.read_stat(os.getpid())
    assert st is not None
    alive = {"pid": os.getpid(), "start_time": st.start_time, "log": "/x/scheduler.log"}
    reused = {**alive, "start_time": st.start_time - 1}
    statuses = await backend.check_clusters([(None, alive), (None, reused), (None, {})])  # type: ignore[list-item]
    assert statuses[0].running
    assert not statuses[1].running and "/x/scheduler.log" in statuses[1].reason
    assert not statuses[2].running and "no checkpoint" in statuses[2].reason


async def test_stop_never_signals_a_reused_pid() -> None:
    """A checkpoint whose pid now belongs to another process (here: us) is left alone."""
    backend = LocalBackend(config=Config())
    st = procfs.read_stat(os.getpid())
    assert st is not None
    reused = {"pid": os.getpid(), "start_time": st.start_time - 1}
    assert not backend._group_present(os.getpid(), st.start_time - 1)
    # Would deliver SIGINT to this test process if it did not check the start time.
    await backend._terminate(reused, "test")


def test_find_by_environment_matches_every_pair_and_skips_zombies(tmp_path: Path) -> None:
    def environ(pid: int, **env: str) -> None:
        raw = b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0"
        (tmp_path / str(pid) / "environ").write_bytes(raw)

    write_stat(tmp_path, 10, "scheduler", "S", 10, 1)
    environ(10, DASK_GATEWAY_CLUSTER_NAME="c1", PATH="/bin")
    write_stat(tmp_path, 11, "worker", "S", 11, 2)
    environ(11, DASK_GATEWAY_CLUSTER_NAME="c1", DASK_GATEWAY_WORKER_NAME="w1")
    write_stat(tmp_path, 12, "other", "S", 12, 3)
    environ(12, DASK_GATEWAY_CLUSTER_NAME="c10")  # a prefix is no match
    write_stat(tmp_path, 13, "exited", "Z", 13, 4)
    environ(13, DASK_GATEWAY_CLUSTER_NAME="c1")
    write_stat(tmp_path, 14, "kthread", "S", 14, 5)  # no environ file

    def pids(**marker: str) -> list[int]:
        return sorted(st.pid for st, _ in procfs.find_by_environment(marker, proc=str(tmp_path)))

    assert pids(DASK_GATEWAY_CLUSTER_NAME="c1") == [10, 11]
    assert pids(DASK_GATEWAY_CLUSTER_NAME="c1", DASK_GATEWAY_WORKER_NAME="w1") == [11]
    [(_, env)] = procfs.find_by_environment({"DASK_GATEWAY_WORKER_NAME": "w1"}, str(tmp_path))
    assert env == {"DASK_GATEWAY_CLUSTER_NAME": "c1", "DASK_GATEWAY_WORKER_NAME": "w1"}
