"""The local backend: each cluster's scheduler and workers are processes on this host.

Each process runs in its own session (so its process group id is its pid) with stdout and
stderr appended to a log file in the cluster's working directory::

    <clusters_directory>/<cluster>/.certs/dask.crt, dask.pem   (0600, deleted on stop)
    <clusters_directory>/<cluster>/logs/scheduler.log          (kept after stop)
    <clusters_directory>/<cluster>/logs/worker-<worker>.log    (kept after stop)

When the launcher runs as root, processes run as the cluster owner's Unix account.
Checkpoints hold the pid and its start time (from ``/proc``), so a restarted launcher
adopts processes that are still alive and never signals a reused pid.

A launcher can die between starting a process and reporting its checkpoint. Every
process carries its cluster's (and worker's) name in its environment, so the next
launcher finds it in ``/proc``: a start adopts such a process instead of starting a
second one, and stopping a cluster stops every process group that carries its name.

With ``fork_server`` (the default), schedulers and workers whose command is a script of
the launcher's own Python are forked from a server that has already imported
``distributed`` (see ``flotilla_launcher.forkserver``) instead of starting a new
interpreter; everything above (sessions, logs, accounts, checkpoints, the environment
``/proc`` shows) is the same.
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
from traitlets import Bool, Enum, Float, List, Unicode

from .. import logtail, procfs
from ..forkserver import (
    DEFAULT_PRELOAD,
    ForkServer,
    ForkServerUnavailable,
    SpawnRequest,
    fork_environment,
    forkable,
)
from .base import (
    Backend,
    BackendError,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
    check_name,
)
from .commands import CERT_FILE, KEY_FILE, gateway_environment, scheduler_command, worker_command

__all__ = [
    "LocalBackend",
    "RunAs",
    "build_environment",
]

log = logging.getLogger(__name__)

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
    env.update(
        gateway_environment(
            cluster, str(certs_dir / CERT_FILE), str(certs_dir / KEY_FILE), worker_name
        )
    )
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

    fork_server = Bool(
        True,
        help=(
            "Fork schedulers and workers from a process that has already imported "
            "distributed (then drops to the owner's account), instead of starting a new "
            "Python for each: cluster start-up without the interpreter's start-up. Only "
            "for commands that are scripts of the launcher's own Python with the same "
            "start-up environment; others are always exec'd."
        ),
        config=True,
    )
    fork_server_preload = List(
        Unicode(),
        default_value=list(DEFAULT_PRELOAD),
        help="Modules the fork server imports before forking.",
        config=True,
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Processes this launcher process spawned: their exit codes can be collected.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # Per cluster, the process groups found in /proc when this launcher process first
        # started something for it, by worker name (None: the scheduler). Anything a
        # previous launcher left unreported is among them; nobody else starts any later.
        self._found: dict[str, dict[str | None, list[procfs.ProcStat]]] = {}
        self._forkserver: ForkServer | None = None

    @property
    def forkserver(self) -> ForkServer | None:
        """The fork server, once started (None when ``fork_server`` is off)."""
        return self._forkserver

    async def start(self) -> None:
        """Start the fork server (it becomes ready in the background)."""
        if self.fork_server and self._forkserver is None:
            self._forkserver = ForkServer(self.fork_server_preload)
            self._forkserver.start()

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
        """Prepare the working directory and spawn the scheduler, or adopt the scheduler a
        previous launcher spawned but did not report."""
        run_as = self.resolve_run_as(cluster.owner)
        workdir = self.workdir(cluster.name)
        log_path = workdir / "logs" / "scheduler.log"
        what = f"the scheduler of {cluster.name}"
        adopted = await self._adopt(cluster.name, None, run_as, log_path, what)
        if adopted is not None:
            yield {"workdir": str(workdir), **adopted}
            return
        workdir = await asyncio.to_thread(self._prepare_workdir, cluster, run_as)
        cmd = scheduler_command(cluster.config)
        env = self._environment(cluster, workdir, None, run_as)
        proc = await asyncio.to_thread(
            self._spawn, cmd, env, workdir, log_path, run_as, what, "scheduler"
        )
        log.info(
            "cluster %s: started scheduler pid %s as %s, log %s",
            cluster.name,
            proc["pid"],
            run_as.user if run_as else "self",
            log_path,
        )
        # One checkpoint, once the process exists: a record still CREATED after a
        # launcher restart means "start it or adopt it", never "it may be half started".
        yield {"workdir": str(workdir), **proc}

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        """Stop the scheduler's process group, then any other group carrying the cluster's
        name (started but never reported), then delete the TLS files (logs are kept)."""
        await self._terminate(state, f"scheduler of cluster {cluster.name}")
        self._found.pop(cluster.name, None)
        uid = self._uid_of(cluster.owner)
        for st, worker in await asyncio.to_thread(self._find_groups, cluster.name, uid):
            role = f"worker {worker}" if worker is not None else "scheduler"
            log.warning(
                "cluster %s: stopping %s pid %d, which no checkpoint named",
                cluster.name,
                role,
                st.pid,
            )
            await self._terminate(
                {"pid": st.pid, "start_time": st.start_time},
                f"{role} of cluster {cluster.name}",
                graceful=False,
            )
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
        """Spawn a worker in its cluster's working directory, or adopt the one a previous
        launcher spawned but did not report."""
        cluster = worker.cluster
        name = check_name("worker", worker.name)
        run_as = self.resolve_run_as(cluster.owner)
        workdir = self.workdir(cluster.name)
        log_path = workdir / "logs" / f"worker-{name}.log"
        what = f"worker {name} of {cluster.name}"
        adopted = await self._adopt(cluster.name, name, run_as, log_path, what)
        if adopted is not None:
            yield adopted
            return
        if not (workdir / ".certs" / CERT_FILE).exists():
            raise BackendError(f"cluster {cluster.name} has no working directory")
        cmd = worker_command(cluster.config, name, worker.scheduler_address)
        env = self._environment(cluster, workdir, name, run_as)
        proc = await asyncio.to_thread(
            self._spawn, cmd, env, workdir, log_path, run_as, what, "worker"
        )
        log.info("cluster %s: started worker %s pid %s", cluster.name, name, proc["pid"])
        yield proc

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        """Stop the worker's process group, starting at SIGTERM.

        A worker is stopped once its scheduler has retired it (its data moved) or its
        cluster is going away, so a graceful SIGINT buys nothing; and a retired worker
        can linger for seconds in its own shutdown (the nanny kills it after 8 s).
        """
        what = f"worker {worker.name} of cluster {worker.cluster.name}"
        if state.get("pid"):
            await self._terminate(state, what, graceful=False)
            return
        # No checkpoint: its start may have been interrupted after the spawn.
        uid = self._uid_of(worker.cluster.owner)
        for st, name in await asyncio.to_thread(self._find_groups, worker.cluster.name, uid):
            if name == worker.name:
                await self._terminate(
                    {"pid": st.pid, "start_time": st.start_time}, what, graceful=False
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
        self._found.clear()
        if self._forkserver is not None:
            await asyncio.to_thread(self._forkserver.close)
            self._forkserver = None

    # -- processes without a checkpoint ---------------------------------------------------

    def _uid_of(self, owner: str) -> int | None:
        """The uid ``owner``'s processes run as; None if that account does not exist."""
        try:
            run_as = self.resolve_run_as(owner)
        except BackendError:
            return None
        return run_as.uid if run_as is not None else os.geteuid()

    @staticmethod
    def _find_groups(
        cluster_name: str, uid: int | None
    ) -> list[tuple[procfs.ProcStat, str | None]]:
        """The live process groups started for ``cluster_name``, oldest first, each with
        its worker name (None for the scheduler).

        Found by the environment every process is started with; only group leaders (each
        process is started in its own session) running as the cluster's account ``uid``
        count, so a process someone else gave the same variables is never touched.
        """
        if uid is None:
            return []
        groups = [
            (st, env.get("DASK_GATEWAY_WORKER_NAME"))
            for st, env in procfs.find_by_environment({"DASK_GATEWAY_CLUSTER_NAME": cluster_name})
            if st.pid == st.pgid and procfs.read_uid(st.pid) == uid
        ]
        return sorted(groups, key=lambda group: group[0].start_time)

    async def _adopt(
        self,
        cluster_name: str,
        worker_name: str | None,
        run_as: RunAs | None,
        log_path: Path,
        what: str,
    ) -> dict[str, Any] | None:
        """The checkpoint of a live, unreported process for this scheduler or worker, if a
        previous launcher left one; extra copies are stopped."""
        found = self._found.get(cluster_name)
        if found is None:
            found = {}
            uid = run_as.uid if run_as is not None else os.geteuid()
            for st, name in await asyncio.to_thread(self._find_groups, cluster_name, uid):
                found.setdefault(name, []).append(st)
            self._found[cluster_name] = found
        alive = [
            st for st in found.pop(worker_name, []) if procfs.same_process(st.pid, st.start_time)
        ]
        if not alive:
            return None
        keep, *extra = alive
        for st in extra:
            log.warning("%s: stopping a second copy, pid %d", what, st.pid)
            await self._terminate(
                {"pid": st.pid, "start_time": st.start_time}, what, graceful=False
            )
        log.info(
            "%s: adopted pid %d, started by a previous launcher that did not report it",
            what,
            keep.pid,
        )
        return self._checkpoint(keep.pid, keep.start_time, run_as, log_path)

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
        role: str,
    ) -> dict[str, Any]:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            pid = self._fork(cmd, env, workdir, fd, run_as, what, role)
            if pid is None:
                popen = self._exec(cmd, env, workdir, fd, run_as, what, log_path)
                pid = popen.pid
                self._children[pid] = popen
        finally:
            os.close(fd)
        st = procfs.read_stat(pid)
        return self._checkpoint(pid, st.start_time if st else 0, run_as, log_path)

    @staticmethod
    def _checkpoint(
        pid: int, start_time: int, run_as: RunAs | None, log_path: Path
    ) -> dict[str, Any]:
        return {
            "pid": pid,
            "start_time": start_time,
            "user": run_as.user if run_as else getpass.getuser(),
            "log": str(log_path),
        }

    def _fork(
        self,
        cmd: list[str],
        env: dict[str, str],
        workdir: Path,
        log_fd: int,
        run_as: RunAs | None,
        what: str,
        role: str,
    ) -> int | None:
        """Fork the process from the fork server; None when it must be exec'd instead."""
        server = self._forkserver
        if server is None or not server.ready:
            return None
        script = shutil.which(cmd[0], path=env.get("PATH", os.defpath))
        if not forkable(script, env, server.environment, server.python):
            return None
        assert script is not None
        request = SpawnRequest(
            argv=[script, *cmd[1:]],
            env=fork_environment(env, worker=role == "worker"),
            cwd=str(workdir),
            uid=run_as.uid if run_as else None,
            gid=run_as.gid if run_as else None,
            groups=run_as.groups if run_as else (),
            name=f"dask-{role}",
        )
        try:
            return server.spawn(request, log_fd)
        except ForkServerUnavailable:
            return None
        except (OSError, ValueError) as exc:
            reason = f"cannot start {what}: {exc.strerror if isinstance(exc, OSError) else exc}"
            os.write(log_fd, f"flotilla-launcher: {reason}\n".encode())
            raise BackendError(reason) from exc

    def _exec(
        self,
        cmd: list[str],
        env: dict[str, str],
        workdir: Path,
        fd: int,
        run_as: RunAs | None,
        what: str,
        log_path: Path,
    ) -> subprocess.Popen[bytes]:
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
            return subprocess.Popen(
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

    def _status(self, state: Mapping[str, Any], what: str) -> ProcessStatus:
        pid = state.get("pid")
        logfile = state.get("log", "")
        if not pid:
            return ProcessStatus(False, f"{what} process not found (no checkpoint)")
        if procfs.same_process(int(pid), int(state.get("start_time", -1))):
            st = procfs.read_stat(int(pid))
            return ProcessStatus(True, responsive=st is not None and not st.stopped)
        popen = self._children.pop(int(pid), None)
        code = popen.poll() if popen is not None else None
        if code is None and self._forkserver is not None:
            code = self._forkserver.exit_code(int(pid))
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
