"""What every batch-system backend shares: each scheduler and worker is one batch job,
submitted as the cluster's owner.

A site runs the launcher on a login or service node. For every cluster it writes a
staging directory on a filesystem the compute nodes share, as the owner::

    <staging_directory>/<cluster>/dask.crt, dask.pem        (0600; removed on stop)
    <staging_directory>/<cluster>/scheduler.sh, worker-*.sh  (0700, they hold the cluster
                                                              token; removed on stop)
    <staging_directory>/<cluster>/scheduler.jobid, worker-*.jobid  (each job's id, written
                                                              the moment it exists)
    <staging_directory>/<cluster>/logs/scheduler.log         (the jobs' output; kept)
    <staging_directory>/<cluster>/logs/worker-<worker>.log

Everything done as the owner (writing those files, submitting, cancelling, reading a
log) goes through ``flotilla-batch-helper`` under ``sudo -u <owner>``, or in-process when
the launcher is that user. Status is asked with *one* command per check period for every
job of every cluster, as the launcher's own account (:meth:`BatchBackend.check`).

A subclass says how its batch system submits (:meth:`~BatchBackend.submit_command`,
:meth:`~BatchBackend.parse_job_id`), reports (:meth:`~BatchBackend.query`) and cancels
(:meth:`~BatchBackend.cancel_command`). Checkpoints hold the job id, the owner, the
staging directory and the log file, so a restarted launcher finds every job again; a job
whose launcher died before reporting it is found through its ``.jobid`` record (a start
adopts it while it is alive, a stop cancels it). :meth:`~BatchBackend.read_logs` hands the
jobs' output to the registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import pwd
import re
import shlex
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import Dict, Enum, Float, Integer, List, Unicode, default

from .. import batch_helper
from .base import (
    Backend,
    BackendError,
    ChecksAtOnce,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
    check_name,
)
from .commands import CERT_FILE, KEY_FILE, gateway_environment, scheduler_command, worker_command

__all__ = [
    "Account",
    "BatchBackend",
    "BatchCommandError",
    "JobRequest",
    "JobState",
]

log = logging.getLogger(__name__)

SCHEDULER_SCRIPT = "scheduler.sh"
#: Files in which the helper keeps each job's id as soon as it exists (``scheduler.jobid``,
#: ``worker-<name>.jobid``), so a job whose launcher died before reporting it is found.
RECORD = ".jobid"
SCHEDULER_RECORD = f"scheduler{RECORD}"
RECORDS = f"*{RECORD}"
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What the registry lets a cluster set as a partition, queue or account (and nothing that
# could break out of a command-line argument or a #PBS line).
_SETTING_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
# Files of a cluster's staging directory that hold secrets; removed when it stops.
_SECRET_FILES = ("*.sh", CERT_FILE, KEY_FILE)


class BatchCommandError(RuntimeError):
    """A batch-system command failed in a way that says nothing about the jobs
    (the controller is down, say): the next check period asks again."""


@dataclass(frozen=True)
class Account:
    """The Unix account jobs are submitted as."""

    name: str
    uid: int
    home: str


@dataclass(frozen=True)
class JobRequest:
    """One job to submit, in the terms every batch system has."""

    name: str
    role: str  # "scheduler" or "worker"
    directory: Path
    script: Path
    log: Path
    cores: int
    memory_mib: int
    #: The cluster's own values of the backend's :attr:`~BatchBackend.cluster_settings`
    #: (a partition, a queue...), where its configuration sets them.
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobState:
    """What the batch system says about one job.

    ``state`` is the system's own word (``RUNNING``, ``CANCELLED``, ``F``...); ``detail``
    a user-safe explanation (Slurm's reason, PBS's exit status), possibly empty.
    """

    job_id: str
    alive: bool
    state: str
    detail: str = ""


def _cores(value: float) -> int:
    return max(1, math.ceil(value))


def _mib(value: int) -> int:
    return max(1, math.ceil(value / 2**20))


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


class BatchBackend(ChecksAtOnce, Backend):
    """Base of the batch backends: jobs, scripts, staging and the owner's account."""

    #: The batch system's name in messages ("Slurm", "PBS").
    system_name = "batch system"
    #: Site settings (traits of the backend) a cluster's configuration may set for its own
    #: jobs, from the registry's ``<Backend>ClusterConfig`` of the same names.
    cluster_settings: tuple[str, ...] = ()

    submit_as = Enum(
        ["sudo", "self"],
        default_value="sudo",
        help=(
            "How jobs become the cluster owner's. 'sudo': the launcher runs "
            "`<sudo_command> -u <owner> -- <helper_command>` (root needs no sudoers entry; "
            "a service account needs one, see docs/hpc.md). 'self': jobs are submitted as "
            "the launcher's own account, for a gateway that serves one user."
        ),
        config=True,
    )
    sudo_command = List(
        Unicode(),
        default_value=["sudo", "-n", "-H"],
        help="sudo and its options; `-u <owner> -- <helper_command>` is appended.",
        config=True,
    )
    helper_command = List(
        Unicode(),
        help=(
            "Command of flotilla-batch-helper, run as the owner. Default: the one installed "
            "beside the launcher's Python. It must be reachable by every user."
        ),
        config=True,
    )
    staging_directory = Unicode(
        "{home}/.flotilla/clusters",
        help=(
            "Per-user directory holding one directory per cluster (TLS files, job scripts, "
            "job output), on a filesystem the compute nodes share. {home} and {username} "
            "are replaced by the owner's."
        ),
        config=True,
    )
    setup_script = Unicode(
        "",
        help=(
            "Shell lines every job runs before its scheduler or worker, e.g. "
            "`module load python` or `source /opt/conda/bin/activate dask`."
        ),
        config=True,
    )
    job_path = List(
        Unicode(),
        help=(
            "Directories put at the front of PATH in every job, before setup_script runs. "
            "Default: the bin directory of the launcher's Python (so `dask` is the "
            "launcher's, if compute nodes see the same installation); [] to leave PATH."
        ),
        config=True,
    )
    job_shell = Unicode("/bin/sh", help="Interpreter of the job scripts (#! line).", config=True)
    bind_host = Unicode(
        "0.0.0.0",
        help=(
            "Interface schedulers and workers listen on in their jobs. 0.0.0.0: every "
            "interface of the node, advertising the node's address (Envoy and the workers "
            "must reach it)."
        ),
        config=True,
    )
    walltime = Unicode(
        "", help="Time limit of every job, HH:MM:SS; empty: the queue's default.", config=True
    )
    extra_options = List(
        Unicode(),
        help="More options for the submit command, added to every job's command line.",
        config=True,
    )
    command_environment = Dict(
        value_trait=Unicode(),
        help=(
            "Variables for every batch-system command (those run as users too), e.g. "
            "{'SLURM_CONF': '/etc/slurm/other.conf'}. Jobs inherit them."
        ),
        config=True,
    )
    command_timeout = Float(
        60.0, help="Seconds any one batch-system command may take.", config=True
    )
    command_parallelism = Integer(
        8,
        help="How many submit/cancel commands may run at once (protects the controller).",
        config=True,
    )
    cancel_timeout = Float(
        30.0,
        help=(
            "Seconds a stopping cluster waits for its cancelled scheduler job to leave the "
            "queue before it is reported stopped anyway."
        ),
        config=True,
    )
    cancel_poll_period = Float(
        0.5, help="Seconds between status queries while a cancelled job winds down.", config=True
    )

    @default("helper_command")
    def _default_helper(self) -> list[str]:
        return [str(Path(sys.executable).parent / "flotilla-batch-helper")]

    @default("job_path")
    def _default_job_path(self) -> list[str]:
        return [str(Path(sys.executable).parent)]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._commands = asyncio.Semaphore(max(1, self.command_parallelism))

    # -- what a batch system implements -------------------------------------------------

    def submit_command(self, job: JobRequest) -> list[str]:
        """The command line that submits ``job`` (run in ``job.directory`` as the owner)."""
        raise NotImplementedError

    def parse_job_id(self, stdout: str) -> str:
        """The job id in the submit command's output; :class:`BackendError` if none."""
        raise NotImplementedError

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """The command line that cancels ``job_ids`` (run as their owner)."""
        raise NotImplementedError

    def setting(self, job: JobRequest, name: str) -> str:
        """Site setting ``name`` (a partition, a queue...) for ``job``: its cluster's own
        value if it has one, else the launcher's."""
        return job.settings.get(name) or str(getattr(self, name))

    def _cluster_settings(self, cluster: ClusterSpec) -> dict[str, str]:
        """The values of :attr:`cluster_settings` the cluster's configuration sets."""
        out: dict[str, str] = {}
        for name in self.cluster_settings:
            value = cluster.config.extra.get(name)
            if not value:
                continue
            if not isinstance(value, str) or not _SETTING_RE.match(value):
                raise BackendError(f"invalid {self.system_name} {name} {value!r}")
            out[name] = value
        return out

    def directives(self, job: JobRequest) -> list[str]:
        """Comment lines the batch system reads at the top of the job script (``#PBS
        ...``); none by default (Slurm's options go on the command line)."""
        return []

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """What the batch system says of ``job_ids``, asked with one command.

        Jobs it no longer knows are left out. Raises :class:`BatchCommandError` when the
        answer says nothing about the jobs.
        """
        raise NotImplementedError

    # -- accounts, directories, commands --------------------------------------------------

    def owner_account(self, owner: str) -> Account:
        """The account jobs of ``owner`` are submitted as."""
        if self.submit_as == "self":
            pw = pwd.getpwuid(os.geteuid())
        else:
            try:
                pw = pwd.getpwnam(owner)
            except KeyError:
                raise BackendError(
                    f"Unix user {owner!r} does not exist on the launcher host"
                ) from None
        return Account(pw.pw_name, pw.pw_uid, pw.pw_dir)

    def cluster_directory(self, account: Account, cluster_name: str) -> Path:
        """The staging directory of one cluster."""
        try:
            root = self.staging_directory.format(home=account.home, username=account.name)
        except (KeyError, IndexError, ValueError) as exc:
            raise BackendError(f"invalid staging_directory {self.staging_directory!r}") from exc
        if not os.path.isabs(root):
            raise BackendError(f"staging_directory {root!r} is not an absolute path")
        return Path(root) / check_name("cluster", cluster_name)

    def job_name(self, role: str, cluster_name: str) -> str:
        """``flotilla-<role>-<first 8 characters of the cluster name>``."""
        return f"flotilla-{role}-{cluster_name[:8]}"

    def _stop_account(self, owner: str, state: Mapping[str, Any]) -> Account | None:
        """The account to stop jobs as; None when it does not exist (a start that failed
        on it left nothing behind)."""
        try:
            return self._account_from_state(owner, state)
        except BackendError:
            return None

    def _account_from_state(self, owner: str, state: Mapping[str, Any]) -> Account:
        user = state.get("user")
        if isinstance(user, str) and user:
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                pass
            else:
                return Account(pw.pw_name, pw.pw_uid, pw.pw_dir)
        return self.owner_account(owner)

    async def as_owner(self, account: Account, request: dict[str, Any]) -> dict[str, Any]:
        """Run one flotilla-batch-helper request as ``account``; returns its reply."""
        request = {**request, "timeout": self.command_timeout}
        if self.submit_as == "self" or account.uid == os.geteuid():
            try:
                return await asyncio.to_thread(batch_helper.handle, request)
            except (batch_helper.HelperError, OSError) as exc:
                raise BackendError(f"cannot prepare the job as {account.name}: {exc}") from exc
        argv = [*self.sudo_command, "-u", account.name, "--", *self.helper_command]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendError(f"the launcher cannot run {argv[0]}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(request).encode()), self.command_timeout + 5
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendError(
                f"acting as {account.name} took longer than {self.command_timeout:.0f}s"
            ) from None
        try:
            reply = json.loads(out)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            # sudo itself refused (no sudoers rule, no such user) or the helper is missing.
            reason = _last_line(err.decode(errors="replace")) or f"exit code {proc.returncode}"
            log.warning("%s as %s failed: %s", argv, account.name, reason)
            raise BackendError(f"the launcher cannot act as {account.name}: {reason}")
        if "error" in reply:
            raise BackendError(f"cannot prepare the job as {account.name}: {reply['error']}")
        return reply

    async def run_command(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """Run a batch-system command as the launcher; returns (exit code, stdout, stderr)."""
        env = {**os.environ, **self.command_environment}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise BatchCommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BatchCommandError(
                f"{argv[0]} did not answer within {self.command_timeout:.0f}s"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    # -- job scripts ----------------------------------------------------------------------

    def job_script(
        self, cluster: ClusterSpec, job: JobRequest, command: Sequence[str], worker: str | None
    ) -> str:
        """The script of a scheduler (``worker`` None) or worker job.

        After the batch system's :meth:`directives` it changes to the staging directory,
        puts ``job_path`` first in PATH, runs the site's ``setup_script``, exports the
        cluster's environment and the gateway's variables, and execs the command.
        """
        q = shlex.quote
        env = dict(cluster.config.environment)
        env.update(
            gateway_environment(
                cluster, str(job.directory / CERT_FILE), str(job.directory / KEY_FILE), worker
            )
        )
        lines = [
            f"#!{self.job_shell}",
            *self.directives(job),
            f"# Flotilla: the {job.role} of cluster {cluster.name}, submitted for {cluster.owner}.",
            f"cd {q(str(job.directory))} || exit 1",
        ]
        if self.job_path:
            lines.append(f'export PATH={q(os.pathsep.join(self.job_path))}:"$PATH"')
        if self.setup_script.strip():
            lines.append(self.setup_script.rstrip())
        for key, value in env.items():
            if not _ENV_NAME_RE.match(key):
                raise BackendError(f"invalid environment variable name {key!r}")
            lines.append(f"export {key}={q(value)}")
        lines.append("exec " + " ".join(q(part) for part in command))
        return "\n".join(lines) + "\n"

    async def _submit(
        self,
        account: Account,
        cluster: ClusterSpec,
        job: JobRequest,
        files: dict[str, Any],
        record: str,
    ) -> str:
        """Submit ``job`` as the owner; returns its id.

        The helper keeps the id in ``record`` (in the staging directory) the moment the job
        exists. A record left by a launcher that died before reporting the job means that
        job is ours: while it is alive it is adopted, not submitted a second time.
        """
        request: dict[str, Any] = {
            "action": "submit",
            "directory": str(job.directory),
            "files": files,
            "command": self.submit_command(job),
            "environment": dict(self.command_environment),
            "record": record,
        }
        async with self._commands:
            reply = await self.as_owner(account, request)
            if "recorded" in reply:
                job_id = self._recorded_id(reply["recorded"])
                jobs = await self.query([job_id]) if job_id else {}
                if job_id in jobs and jobs[job_id].alive:
                    log.warning(
                        "cluster %s (user %s): adopted %s job %s, which no checkpoint named",
                        cluster.name,
                        account.name,
                        job.role,
                        job_id,
                    )
                    return job_id
                reply = await self.as_owner(account, {**request, "replace": True})
        if reply.get("returncode") != 0:
            reason = _last_line(reply.get("stderr", "")) or f"exit code {reply.get('returncode')}"
            log.warning(
                "cluster %s (user %s): %s job refused: %s",
                cluster.name,
                account.name,
                job.role,
                reply.get("stderr", "").strip(),
            )
            raise BackendError(
                f"{self.system_name} refused the {job.role} job of cluster {cluster.name}: {reason}"
            )
        return self.parse_job_id(reply.get("stdout", ""))

    def _recorded_id(self, text: object) -> str:
        """The job id in a record file ("" if it holds none)."""
        try:
            return self.parse_job_id(str(text))
        except BackendError:
            return ""

    # -- cluster hooks --------------------------------------------------------------------

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        """Stage the TLS files and the script as the owner, then submit the scheduler."""
        account = self.owner_account(cluster.owner)
        directory = self.cluster_directory(account, cluster.name)
        config = cluster.config
        job = JobRequest(
            name=self.job_name("scheduler", cluster.name),
            role="scheduler",
            directory=directory,
            script=directory / SCHEDULER_SCRIPT,
            log=directory / "logs" / "scheduler.log",
            cores=_cores(config.scheduler_cores),
            memory_mib=_mib(config.scheduler_memory),
            settings=self._cluster_settings(cluster),
        )
        script = self.job_script(cluster, job, scheduler_command(config, self.bind_host), None)
        files = {
            CERT_FILE: {"text": cluster.tls_cert, "mode": 0o600},
            KEY_FILE: {"text": cluster.tls_key, "mode": 0o600},
            SCHEDULER_SCRIPT: {"text": script, "mode": 0o700},
        }
        job_id = await self._submit(account, cluster, job, files, SCHEDULER_RECORD)
        log.info(
            "cluster %s (user %s): scheduler is %s job %s, output %s",
            cluster.name,
            account.name,
            self.system_name,
            job_id,
            job.log,
        )
        # One checkpoint, once the job exists: a record still CREATED after a launcher
        # restart means "submit it or adopt it", never "it may be half submitted".
        yield {
            "directory": str(directory),
            "user": account.name,
            "job_id": job_id,
            "log": str(job.log),
        }

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        """Cancel the scheduler's job and every job recorded in the staging directory
        (workers, and jobs a launcher died before reporting), delete the cluster's secrets
        (logs stay), and wait (up to ``cancel_timeout``) for the scheduler's job to leave
        the queue."""
        account = self._stop_account(cluster.owner, state)
        if account is None:
            return  # no such account: nothing can have been staged or submitted
        directory = str(state.get("directory") or self.cluster_directory(account, cluster.name))
        reply = await self.as_owner(
            account, {"action": "recorded", "directory": directory, "names": [RECORDS]}
        )
        recorded = reply.get("recorded") or {}
        scheduler = str(state.get("job_id") or "") or self._recorded_id(
            recorded.get(SCHEDULER_RECORD, "")
        )
        ids = [scheduler] if scheduler else []
        for text in recorded.values():
            job_id = self._recorded_id(text)
            if job_id and job_id not in ids:
                ids.append(job_id)
        await self._cancel(account, ids, directory, [*_SECRET_FILES, RECORDS], cluster.name)
        if scheduler:
            await self._wait_gone(scheduler, cluster.name)

    # -- worker hooks ---------------------------------------------------------------------

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        """Write the worker's script beside its cluster's TLS files and submit it."""
        cluster = worker.cluster
        name = check_name("worker", worker.name)
        account = self.owner_account(cluster.owner)
        directory = self.cluster_directory(account, cluster.name)
        config = cluster.config
        job = JobRequest(
            name=self.job_name("worker", cluster.name),
            role="worker",
            directory=directory,
            script=directory / f"worker-{name}.sh",
            log=directory / "logs" / f"worker-{name}.log",
            cores=_cores(config.worker_cores),
            memory_mib=_mib(config.worker_memory),
            settings=self._cluster_settings(cluster),
        )
        command = worker_command(config, name, worker.scheduler_address, self.bind_host)
        script = self.job_script(cluster, job, command, name)
        files = {job.script.name: {"text": script, "mode": 0o700}}
        job_id = await self._submit(account, cluster, job, files, f"worker-{name}{RECORD}")
        log.info(
            "cluster %s (user %s): worker %s is %s job %s",
            cluster.name,
            account.name,
            name,
            self.system_name,
            job_id,
        )
        yield {
            "directory": str(directory),
            "user": account.name,
            "job_id": job_id,
            "log": str(job.log),
        }

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        """Cancel the worker's job (if it still runs; found by its record when no
        checkpoint names it) and delete its script."""
        account = self._stop_account(worker.cluster.owner, state)
        if account is None:
            return
        name = check_name("worker", worker.name)
        record = f"worker-{name}{RECORD}"
        directory = str(
            state.get("directory") or self.cluster_directory(account, worker.cluster.name)
        )
        job_id = str(state.get("job_id") or "")
        if not job_id:
            reply = await self.as_owner(
                account, {"action": "recorded", "directory": directory, "names": [record]}
            )
            job_id = self._recorded_id((reply.get("recorded") or {}).get(record, ""))
        remove = [f"worker-{name}.sh", record]
        await self._cancel(
            account, [job_id] if job_id else [], directory, remove, worker.cluster.name
        )

    async def check(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        """Every scheduler's and worker's job in one status query."""
        ids = {str(state["job_id"]) for _, state in [*clusters, *workers] if state.get("job_id")}
        jobs = await self.query(sorted(ids)) if ids else {}
        return (
            [self._status(state, "scheduler", jobs) for _, state in clusters],
            [self._status(state, "worker", jobs) for _, state in workers],
        )

    # -- logs -----------------------------------------------------------------------------

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        """The tails of the jobs' output files (``logs/*.log`` of the staging directory),
        read as their owner: the scheduler first, then workers most recently written."""
        account = self._stop_account(cluster.owner, state)
        if account is None:
            return {}
        directory = state.get("directory") or str(self.cluster_directory(account, cluster.name))
        reply = await self.as_owner(
            account,
            {
                "action": "logs",
                "directory": str(directory),
                "tail_bytes": tail_bytes,
                "total_bytes": total_bytes,
            },
        )
        logs = reply.get("logs")
        if not isinstance(logs, dict):
            return {}
        return {str(k): str(v) for k, v in logs.items()}

    # -- helpers --------------------------------------------------------------------------

    def _status(
        self, state: Mapping[str, Any], role: str, jobs: Mapping[str, JobState]
    ) -> ProcessStatus:
        job_id = str(state.get("job_id") or "")
        output = f"; output in {state['log']}" if state.get("log") else ""
        if not job_id:
            return ProcessStatus(False, f"the {role} job was never submitted")
        job = jobs.get(job_id)
        if job is None:
            return ProcessStatus(
                False, f"{role} job {job_id} is no longer known to {self.system_name}{output}"
            )
        if job.alive:
            return ProcessStatus(True)
        detail = f" ({job.detail})" if job.detail else ""
        return ProcessStatus(False, f"{role} job {job_id} {job.state}{detail}{output}")

    async def _cancel(
        self, account: Account, job_ids: list[str], directory: str, remove: list[str], cluster: str
    ) -> None:
        request = {
            "action": "cancel",
            "directory": directory,
            "command": self.cancel_command(job_ids) if job_ids else [],
            "remove": remove,
            "environment": dict(self.command_environment),
        }
        async with self._commands:
            reply = await self.as_owner(account, request)
        if reply.get("returncode", 0) == 0:
            return
        # Cancelling a job that has already ended fails; anything else must be retried.
        jobs = await self.query(job_ids)
        alive = [j for j in job_ids if j in jobs and jobs[j].alive]
        if alive:
            raise BackendError(
                f"cannot cancel {self.system_name} jobs {', '.join(alive)} of cluster {cluster}: "
                f"{_last_line(reply.get('stderr', ''))}"
            )
        log.debug("cluster %s: jobs %s had already ended", cluster, ", ".join(job_ids))

    async def _wait_gone(self, job_id: str, cluster: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_timeout
        while True:
            try:
                jobs = await self.query([job_id])
            except BatchCommandError as exc:
                log.warning(
                    "cluster %s: cannot tell whether job %s ended: %s", cluster, job_id, exc
                )
                return
            if job_id not in jobs or not jobs[job_id].alive:
                return
            if loop.time() >= deadline:
                log.warning(
                    "cluster %s: %s job %s still %s %.0fs after it was cancelled",
                    cluster,
                    self.system_name,
                    job_id,
                    jobs[job_id].state,
                    self.cancel_timeout,
                )
                return
            await asyncio.sleep(self.cancel_poll_period)
