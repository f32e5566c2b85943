"""The local backend: each cluster's scheduler and workers are processes on this host.

Each process runs in its own session (so its process group id is its pid) with stdout and
stderr appended to a log file in the cluster's working directory::

    <clusters_directory>/<cluster>/.certs/dask.crt, dask.pem   (0600, deleted on stop)
    <clusters_directory>/<cluster>/logs/scheduler.log          (kept after stop)
    <clusters_directory>/<cluster>/logs/worker-<worker>.log    (kept after stop)

When the launcher runs as root, processes run as the cluster owner's Unix account.
Checkpoints hold the pid and its start time (from ``/proc``), so a restarted launcher
adopts processes that are still alive and never signals a reused pid.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla_common.config import Deployment
from traitlets import Enum, Float, List, Unicode

from .. import logtail, procfs
from .base import (
    Backend,
    BackendError,
    ClusterConfig,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
    check_name,
)

__all__ = [
    "LocalBackend",
    "RunAs",
    "build_environment",
    "scheduler_command",
    "worker_command",
]

log = logging.getLogger(__name__)

CERT_FILE = "dask.crt"
KEY_FILE = "dask.pem"

# Switches to the owner's account, then execs the command. Spawning through it lets
# subprocess use vfork: with user=/group= it must fork(), and fork() in a process with
# gRPC threads runs gRPC's atfork handlers, which crash the child now and then.
_BECOME = (
    "import os, sys\n"
    "uid, gid = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.setgroups([int(g) for g in sys.argv[3].split(',') if g])\n"
    "os.setgid(gid)\n"
    "os.setuid(uid)\n"
    "try:\n"
    "    os.execv(sys.argv[4], sys.argv[5:])\n"
    "except OSError as exc:\n"
    "    print(f'flotilla-launcher: cannot execute {sys.argv[4]}: {exc.strerror}',"
    " file=sys.stderr)\n"
    "    sys.exit(127)\n"
)


@dataclass(frozen=True)
class RunAs:
    """The Unix account a cluster's processes run as (None in hooks: the launcher's own)."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _fmt(value: float) -> str:
    return repr(float(value))


def scheduler_command(config: ClusterConfig) -> list[str]:
    """The scheduler's command line (internals.md, "Launcher contract")."""
    return [
        *config.scheduler_cmd,
        "--protocol",
        "tls",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--dashboard-address",
        "127.0.0.1:0",
        "--preload",
        config.scheduler_preload,
        "--dg-api-address",
        "127.0.0.1:0",
        "--dg-heartbeat-period",
        _fmt(config.heartbeat_period),
        "--dg-adaptive-period",
        _fmt(config.adaptive_period),
        "--dg-idle-timeout",
        _fmt(config.idle_timeout),
    ]


def worker_command(config: ClusterConfig, worker_name: str, scheduler_address: str) -> list[str]:
    """A worker's command line; ``scheduler_address`` is ``host:port`` (or a full URL)."""
    address = scheduler_address if "://" in scheduler_address else f"tls://{scheduler_address}"
    return [
        *config.worker_cmd,
        address,
        "--dashboard-address",
        "127.0.0.1:0",
        "--name",
        worker_name,
        "--nthreads",
        str(config.worker_threads),
        "--memory-limit",
        str(config.worker_memory),
    ]


def build_environment(
    cluster: ClusterSpec,
    *,
    certs_dir: Path,
    worker_name: str | None,
    run_as: RunAs | None,
    inherited: Mapping[str, str],
    keep: Sequence[str],
    bin_dir: str,
) -> dict[str, str]:
    """The environment of a scheduler (``worker_name`` None) or worker process.

    Order: variables kept from the launcher (PATH with ``bin_dir`` first), the account's
    USER/HOME, the cluster configuration's ``environment``, then the gateway's own
    variables, which the configuration cannot override.
    """
    env = {key: inherited[key] for key in keep if key in inherited}
    path = inherited.get("PATH", os.defpath)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in path.split(os.pathsep) if p)])
    if run_as is not None:
        env["USER"] = env["LOGNAME"] = run_as.user
        env["HOME"] = run_as.home
    else:
        env["USER"] = inherited.get("USER") or getpass.getuser()
        if "HOME" in inherited:
            env["HOME"] = inherited["HOME"]
    # Scratch space in the cluster's own directory, not a /tmp path shared by every user.
    env["DASK_TEMPORARY_DIRECTORY"] = str(certs_dir.parent)
    env.update(cluster.config.environment)
    cert = str(certs_dir / CERT_FILE)
    key = str(certs_dir / KEY_FILE)
    role = "SCHEDULER" if worker_name is None else "WORKER"
    env.update(
        {
            "DASK_GATEWAY_API_URL": cluster.api_url,
            "DASK_GATEWAY_API_TOKEN": cluster.token,
            "DASK_GATEWAY_CLUSTER_NAME": cluster.name,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
            f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT": cert,
            f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY": key,
        }
    )
    if worker_name is not None:
        env["DASK_GATEWAY_WORKER_NAME"] = worker_name
    return env


class LocalBackend(Backend):
    """Runs schedulers and workers as local processes, one working directory per cluster."""

    backend_name = "local"

    clusters_directory = Unicode(
        "",
        help=(
            "Directory holding one working directory per cluster (TLS files, logs). "
            "Default: <state_dir>/clusters. When processes run as their owners, every "
            "directory above it must be traversable by them."
        ),
        config=True,
    )
    run_as = Enum(
        ["auto", "self", "user"],
        default_value="auto",
        help=(
            "Which Unix account cluster processes run as. 'user': the cluster owner's "
            "account (needs root; a missing account fails the cluster). 'self': the "
            "launcher's own account. 'auto': 'user' when the launcher runs as root, "
            "else 'self'."
        ),
        config=True,
    )
    sigint_timeout = Float(
        10.0,
        help="Seconds to wait after SIGINT before sending SIGTERM when stopping a process.",
        config=True,
    )
    sigterm_timeout = Float(
        5.0,
        help="Seconds to wait after SIGTERM before sending SIGKILL when stopping a process.",
        config=True,
    )
    sigkill_timeout = Float(
        5.0,
        help="Seconds to wait after SIGKILL for the process group to disappear.",
        config=True,
    )
    inherited_environment = List(
        Unicode(),
        default_value=[
            "PATH",
            "PYTHONPATH",
            "CONDA_ROOT",
            "CONDA_DEFAULT_ENV",
            "VIRTUAL_ENV",
            "LANG",
            "LC_ALL",
        ],
        help=(
            "Environment variables copied from the launcher into cluster processes. PATH "
            "always gets the launcher interpreter's bin directory first."
        ),
        config=True,
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Processes this launcher process spawned: their exit codes can be collected.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- paths and accounts -------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The directory holding every cluster's working directory."""
        if self.clusters_directory:
            return Path(self.clusters_directory).resolve()
        state_path: Path = Deployment(config=self.config).state_path
        return state_path / "clusters"

    def workdir(self, cluster_name: str) -> Path:
        """The working directory of ``cluster_name``."""
        return self.root / check_name("cluster", cluster_name)

    def resolve_run_as(self, owner: str) -> RunAs | None:
        """The account to run ``owner``'s processes as; None means the launcher's own."""
        mode = self.run_as
        if mode == "auto":
            mode = "user" if os.geteuid() == 0 else "self"
        if mode == "self":
            return None
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise BackendError(f"Unix user {owner!r} does not exist on the launcher host") from None
        if pw.pw_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise BackendError(
                f"the launcher cannot run processes as {owner!r}: it does not run as root"
            )
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)

    # -- cluster hooks --------------------------------------------------------------------

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        """Prepare the working directory, then spawn the scheduler."""
        run_as = self.resolve_run_as(cluster.owner)
        workdir = await asyncio.to_thread(self._prepare_workdir, cluster, run_as)
        yield {"workdir": str(workdir)}
        cmd = scheduler_command(cluster.config)
        env = self._environment(cluster, workdir, None, run_as)
        log_path = workdir / "logs" / "scheduler.log"
        proc = await asyncio.to_thread(
            self._spawn, cmd, env, workdir, log_path, run_as, f"the scheduler of {cluster.name}"
        )
        log.info(
            "cluster %s: started scheduler pid %s as %s, log %s",
            cluster.name,
            proc["pid"],
            run_as.user if run_as else "self",
            log_path,
        )
        yield {"workdir": str(workdir), **proc}

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        """Stop the scheduler's process group, then delete the TLS files (logs are kept)."""
        await self._terminate(state, f"scheduler of cluster {cluster.name}")
        workdir = Path(state.get("workdir") or self.workdir(cluster.name))
        await asyncio.to_thread(shutil.rmtree, workdir / ".certs", True)
        log.info("cluster %s: scheduler stopped, logs kept in %s", cluster.name, workdir / "logs")

    async def check_clusters(
        self, clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        """One /proc lookup per scheduler."""
        return [self._status(state, "scheduler") for _, state in clusters]

    # -- worker hooks ---------------------------------------------------------------------

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        """Spawn a worker in its cluster's working directory."""
        cluster = worker.cluster
        name = check_name("worker", worker.name)
        run_as = self.resolve_run_as(cluster.owner)
        workdir = self.workdir(cluster.name)
        if not (workdir / ".certs" / CERT_FILE).exists():
            raise BackendError(f"cluster {cluster.name} has no working directory")
        cmd = worker_command(cluster.config, name, worker.scheduler_address)
        env = self._environment(cluster, workdir, name, run_as)
        log_path = workdir / "logs" / f"worker-{name}.log"
        proc = await asyncio.to_thread(
            self._spawn, cmd, env, workdir, log_path, run_as, f"worker {name} of {cluster.name}"
        )
        log.info("cluster %s: started worker %s pid %s", cluster.name, name, proc["pid"])
        yield proc

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        """Stop the worker's process group, starting at SIGTERM.

        A worker is stopped once its scheduler has retired it (its data moved) or its
        cluster is going away, so a graceful SIGINT buys nothing; and a retired worker
        can linger for seconds in its own shutdown (the nanny kills it after 8 s).
        """
        await self._terminate(
            state, f"worker {worker.name} of cluster {worker.cluster.name}", graceful=False
        )

    async def check_workers(
        self, workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        """One /proc lookup per worker."""
        return [self._status(state, "worker") for _, state in workers]

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        """The tails of ``logs/*.log`` in the cluster's working directory."""
        workdir = Path(state.get("workdir") or self.workdir(cluster.name))
        return await asyncio.to_thread(
            logtail.read_log_dir, workdir, "logs", tail_bytes, total_bytes
        )

    async def close(self) -> None:
        """Forget spawned children; they keep running (the launcher may restart)."""
        self._children.clear()

    # -- helpers --------------------------------------------------------------------------

    def _environment(
        self, cluster: ClusterSpec, workdir: Path, worker_name: str | None, run_as: RunAs | None
    ) -> dict[str, str]:
        return build_environment(
            cluster,
            certs_dir=workdir / ".certs",
            worker_name=worker_name,
            run_as=run_as,
            inherited=os.environ,
            keep=list(self.inherited_environment),
            bin_dir=str(Path(sys.executable).parent),
        )

    def _prepare_workdir(self, cluster: ClusterSpec, run_as: RunAs | None) -> Path:
        root = self.root
        if not root.exists():
            root.mkdir(parents=True, exist_ok=True)
            # Owners must be able to reach their own directory, not list the others.
            root.chmod(0o711)
        workdir = self.workdir(cluster.name)
        certs = workdir / ".certs"
        logs = workdir / "logs"
        for d in (workdir, certs, logs):
            d.mkdir(mode=0o700, exist_ok=True)
            self._own(d, run_as)
        for filename, text in ((CERT_FILE, cluster.tls_cert), (KEY_FILE, cluster.tls_key)):
            path = certs / filename
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(path, 0o600)
            self._own(path, run_as)
        return workdir

    @staticmethod
    def _own(path: Path, run_as: RunAs | None) -> None:
        if run_as is not None:
            os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)

    def _spawn(
        self,
        cmd: list[str],
        env: dict[str, str],
        workdir: Path,
        log_path: Path,
        run_as: RunAs | None,
        what: str,
    ) -> dict[str, Any]:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            argv = list(cmd)
            if run_as is not None:
                exe = shutil.which(cmd[0], path=env.get("PATH", os.defpath))
                if exe is None:
                    reason = f"cannot start {what}: {cmd[0]}: command not found"
                    os.write(fd, f"flotilla-launcher: {reason}\n".encode())
                    raise BackendError(f"{reason}; see {log_path}")
                groups = ",".join(str(g) for g in run_as.groups)
                argv = [sys.executable, "-I", "-c", _BECOME, str(run_as.uid), str(run_as.gid)]
                argv += [groups, exe, *cmd]
            try:
                popen = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                reason = f"cannot start {what}: {exc.filename or cmd[0]}: {exc.strerror or exc}"
                os.write(fd, f"flotilla-launcher: {reason}\n".encode())
                raise BackendError(f"{reason}; see {log_path}") from exc
        finally:
            os.close(fd)
        self._children[popen.pid] = popen
        st = procfs.read_stat(popen.pid)
        return {
            "pid": popen.pid,
            "start_time": st.start_time if st else 0,
            "user": run_as.user if run_as else getpass.getuser(),
            "log": str(log_path),
        }

    def _status(self, state: Mapping[str, Any], what: str) -> ProcessStatus:
        pid = state.get("pid")
        logfile = state.get("log", "")
        if not pid:
            return ProcessStatus(False, f"{what} process not found (no checkpoint)")
        if procfs.same_process(int(pid), int(state.get("start_time", -1))):
            return ProcessStatus(True)
        popen = self._children.pop(int(pid), None)
        code = popen.poll() if popen is not None else None
        if code is None:
            return ProcessStatus(False, f"{what} process {pid} is gone; see {logfile}")
        if code < 0:
            try:
                signame = signal.Signals(-code).name
            except ValueError:
                signame = str(-code)
            return ProcessStatus(False, f"{what} was killed by {signame}; see {logfile}")
        return ProcessStatus(False, f"{what} exited with code {code}; see {logfile}")

    def _group_present(self, pid: int, start_time: int) -> bool:
        """True if process group ``pid`` (ours) still has live members."""
        leader = procfs.read_stat(pid)
        if leader is not None and leader.start_time != start_time:
            # The pid was reused, so our group (whose id pins the pid) is gone.
            return False
        if leader is not None and leader.alive:
            return True
        return bool(procfs.group_members(pid))

    def _reap(self, pid: int) -> None:
        popen = self._children.get(pid)
        if popen is not None and popen.poll() is not None:
            del self._children[pid]

    async def _terminate(
        self, state: Mapping[str, Any], what: str, *, graceful: bool = True
    ) -> None:
        """Stop a process group: SIGINT, then SIGTERM, then SIGKILL, each after a timeout.

        SIGINT goes to the leader only, so a ``dask worker`` nanny can shut its worker
        process down cleanly (a group-wide SIGINT interrupts that child mid-teardown);
        SIGTERM and SIGKILL go to the whole group, so nothing is left behind.
        """
        pid = int(state.get("pid") or 0)
        if pid <= 0:
            return
        start_time = int(state.get("start_time", -1))
        steps = (
            (signal.SIGINT, False, self.sigint_timeout),
            (signal.SIGTERM, True, self.sigterm_timeout),
            (signal.SIGKILL, True, self.sigkill_timeout),
        )[0 if graceful else 1 :]
        loop = asyncio.get_running_loop()
        for sig, whole_group, timeout in steps:
            self._reap(pid)
            if not self._group_present(pid, start_time):
                break
            leader_alive = procfs.same_process(pid, start_time)
            if not whole_group and not leader_alive:
                continue  # only stragglers left: escalate to the group
            log.info(
                "stopping %s: %s to %s %s",
                what,
                sig.name,
                "process group" if whole_group else "process",
                pid,
            )
            try:
                if whole_group:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                continue
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                await asyncio.sleep(0.05)
                self._reap(pid)
                if not self._group_present(pid, start_time):
                    break
                if not whole_group and not procfs.same_process(pid, start_time):
                    break  # the leader is gone; stragglers get SIGTERM at once
        else:
            if self._group_present(pid, start_time):
                raise RuntimeError(f"{what}: process group {pid} survived SIGKILL")
        self._reap(pid)
