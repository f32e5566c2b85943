"""The fork server: a forked process must be indistinguishable from an exec'd one.

A probe script (a script of this very interpreter, so it is forkable) reports what it
sees; every property a cluster process relies on is checked: its session, descriptors,
environment, arguments, working directory, account, dask configuration and randomness.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flotilla_launcher import procfs
from flotilla_launcher.forkserver import (
    ForkServer,
    ForkServerUnavailable,
    SpawnRequest,
    fork_environment,
    forkable,
)
from helpers import wait_for

PROBE = """\
#!{python}
import json, os, sys, time
import dask.config
import numpy
report = {{
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "ppid": os.getppid(),
    "uid": os.getuid(),
    "gid": os.getgid(),
    "groups": sorted(os.getgroups()),
    "cwd": os.getcwd(),
    "argv": sys.argv,
    "path0": sys.path[0],
    "env": dict(os.environ),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "stdin": os.readlink("/proc/self/fd/0"),
    "dask_probe": dask.config.get("probe.value", None),
    "dask_home": dask.config.get("home-probe", None),
    "random": numpy.random.randint(0, 2**31),
}}
print(json.dumps(report), flush=True)
if "exit" in sys.argv:
    sys.exit(int(sys.argv[-1]))
time.sleep(60)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    fs = ForkServer(["dask.config", "numpy"])
    fs.start()
    try:
        assert fs.wait_ready(120), "the fork server did not become ready"
        yield fs
    finally:
        fs.close()


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "probe"
    script.parent.mkdir()
    script.write_text(PROBE.format(python=sys.executable))
    script.chmod(0o755)
    return script


def _spawn(
    server: ForkServer, probe: Path, workdir: Path, env: dict[str, str], *args: str, **kw: Any
) -> tuple[int, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "out.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        pid = server.spawn(
            SpawnRequest([str(probe), *args], env, str(workdir), name="probe", **kw), fd
        )
    finally:
        os.close(fd)
    return pid, log


def _report(log: Path) -> dict[str, Any]:
    text = wait_for(lambda: log.exists() and log.read_text().strip(), 60, "the probe's report")
    return dict(json.loads(text.splitlines()[0]))


def _stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_forked_process_looks_exec_d(server: ForkServer, probe: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "dask").mkdir(parents=True)
    (home / ".config" / "dask" / "probe.yaml").write_text("home-probe: from-home\n")
    env = {"PATH": os.defpath, "HOME": str(home), "DASK_PROBE__VALUE": "42", "ONLY": "me"}
    pid, log = _spawn(server, probe, tmp_path / "work", env, "--flag")
    try:
        report = _report(log)
        assert report["pid"] == pid
        assert report["sid"] == pid, "a session of its own (its group is stopped by pgid)"
        assert report["ppid"] == server.pid, "forked by the server, not exec'd"
        assert report["cwd"] == str(tmp_path / "work")
        assert report["argv"] == [str(probe), "--flag"]
        assert report["path0"] == str(probe.parent), "the script's directory, not the cwd"
        assert report["env"] == env, "exactly the requested environment"
        assert report["fds"] == [0, 1, 2, 3], "only stdio (3 is listdir's own)"
        assert report["stdin"] == "/dev/null"
        assert report["dask_probe"] == 42, "dask config re-read from the new environment"
        assert report["dask_home"] == "from-home", "and from the new HOME"
        # ps and /proc show the command and environment, as after exec.
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [
            str(probe).encode(),
            b"--flag",
        ]
        assert b"ONLY=me" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "probe"
    finally:
        _stop(pid)


def test_siblings_do_not_share_random_state(
    server: ForkServer, probe: Path, tmp_path: Path
) -> None:
    env = {"PATH": os.defpath}
    a, log_a = _spawn(server, probe, tmp_path / "a", env)
    b, log_b = _spawn(server, probe, tmp_path / "b", env)
    try:
        assert _report(log_a)["random"] != _report(log_b)["random"]
    finally:
        _stop(a)
        _stop(b)


def test_exit_code_is_reported(server: ForkServer, probe: Path, tmp_path: Path) -> None:
    pid, log = _spawn(server, probe, tmp_path / "w", {"PATH": os.defpath}, "exit", "7")
    _report(log)
    assert wait_for(lambda: server.exit_code(pid) is not None, 30, "the exit report")
    assert server.exit_code(pid) == 7
    assert not procfs.same_process(pid, -1)


def test_setup_failure_is_an_error_not_a_process(
    server: ForkServer, probe: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No such file or directory"):
            server.spawn(SpawnRequest([str(probe)], {}, str(tmp_path / "missing")), fd)
    finally:
        os.close(fd)
    assert log.read_text() == "", "the probe never ran"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another account needs root")
def test_runs_as_the_requested_account(server: ForkServer) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    # The account must reach the script and its working directory (pytest's are private).
    root = Path(tempfile.mkdtemp(prefix="flotilla-forkserver-"))
    root.chmod(0o755)
    probe = root / "probe"
    probe.write_text(PROBE.format(python=sys.executable))
    probe.chmod(0o755)
    work = root / "work"
    work.mkdir()
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    pid, log = _spawn(
        server,
        probe,
        work,
        {"PATH": os.defpath, "HOME": "/nonexistent"},
        uid=nobody.pw_uid,
        gid=nobody.pw_gid,
        groups=[nobody.pw_gid],
    )
    try:
        report = _report(log)
        assert (report["uid"], report["gid"]) == (nobody.pw_uid, nobody.pw_gid)
        assert report["groups"] == [nobody.pw_gid], "no supplementary group of root's"
        assert procfs.read_uid(pid) == nobody.pw_uid
        # The owner may signal (and so stop) their own process: it is theirs, not root's.
        assert Path(f"/proc/{pid}").stat().st_uid == nobody.pw_uid
    finally:
        _stop(pid)
        shutil.rmtree(root, ignore_errors=True)


def test_only_equivalent_commands_are_forked(server: ForkServer, probe: Path) -> None:
    env = {"PATH": os.defpath}
    assert forkable(str(probe), env, server.environment, server.python)
    # Another interpreter, or no script at all: exec'd.
    assert not forkable("/bin/sh", env, server.environment, server.python)
    assert not forkable(None, env, server.environment, server.python)
    # Something read at interpreter start-up differs: exec'd.
    for key, value in (
        ("PYTHONPATH", "/elsewhere"),
        ("LD_PRELOAD", "libfoo.so"),
        ("OMP_NUM_THREADS", "8"),
    ):
        assert not forkable(str(probe), {**env, key: value}, server.environment, server.python)
    # The server's own BLAS settings may be left out, not changed.
    assert forkable(str(probe), {**env, "OMP_NUM_THREADS": "1"}, server.environment, server.python)
    worker_env = fork_environment(env, worker=True)
    assert worker_env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] == "fork"
    chosen = {**env, "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "spawn"}
    assert fork_environment(chosen, worker=True) == chosen


def test_children_outlive_the_server(probe: Path, tmp_path: Path) -> None:
    fs = ForkServer(["dask.config"])
    fs.start()
    assert fs.wait_ready(120)
    pid, log = _spawn(fs, probe, tmp_path / "w", {"PATH": os.defpath})
    try:
        report = _report(log)
        start = procfs.read_stat(pid)
        assert start is not None
        server_pid = fs.pid
        fs.close()
        assert not procfs.same_process(server_pid, -1) and procfs.read_stat(server_pid) is None
        assert procfs.same_process(pid, start.start_time), "the cluster keeps running"
        assert report["pid"] == pid
    finally:
        _stop(pid)


def test_a_crashed_server_is_replaced(probe: Path, tmp_path: Path) -> None:
    fs = ForkServer(["dask.config"])
    fs.start()
    try:
        assert fs.wait_ready(120)
        first = fs.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # Meanwhile the launcher runs commands the ordinary way ...
        wait_for(lambda: not fs.ready, 30, "the crash to be noticed")
        with pytest.raises(ForkServerUnavailable):
            _spawn(fs, probe, tmp_path / "a", {"PATH": os.defpath})
        # ... until a new server is up.
        wait_for(lambda: fs.ready and fs.pid != first, 60, "a new fork server")
        pid, log = _spawn(fs, probe, tmp_path / "b", {"PATH": os.defpath})
        try:
            assert _report(log)["ppid"] == fs.pid
        finally:
            _stop(pid)
    finally:
        fs.close()


def test_no_forking_where_proc_cannot_show_the_environment(tmp_path: Path) -> None:
    # A server that finds the kernel refuses PR_SET_MM_MAP says so and exits: forked
    # processes must show their environment (a restarted launcher finds unreported
    # processes by it), so everything is exec'd and the server is not restarted.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho unsupported\n")
    fake.chmod(0o755)
    fs = ForkServer([], python=str(fake))
    fs.start()
    try:
        wait_for(lambda: fs.unsupported and fs.pid is None, 30, "the server to give up")
        assert not fs.ready
        with pytest.raises(ForkServerUnavailable):
            fs.spawn(SpawnRequest(["/bin/true"], {}, str(tmp_path)), 1)
    finally:
        fs.close()
