"""The ``yarn`` backend: every cluster is one YARN application, run through skein.

One skein driver (a Java process, started in :meth:`YarnBackend.start`, restarted when it
dies) talks to the ResourceManager as the service user (``c.YarnBackend.principal`` /
``keytab`` under Kerberos). Each cluster is an application submitted *for* its owner
(proxy-user impersonation, ``ApplicationSpec(user=owner)``) in the cluster's
``c.YarnClusterConfig.queue``:

* the scheduler (``commands.scheduler_command``, listening on every interface of its
  node) runs in the ApplicationMaster's container, and starts when the container does,
  beside the ApplicationMaster's JVM rather than after it: the container's environment
  names ``SCHEDULER_START`` as ``BASH_ENV``, which the ``bash -c`` that YARN runs the
  master's command line with sources first. The script unsets ``BASH_ENV`` and starts
  ``SCHEDULER_SCRIPT`` in the background, its output in the container's ``scheduler.log``.
  skein's master script (run once the ApplicationMaster has registered) waits for the
  scheduler's exit status on a FIFO and exits with it, so the application ends with it
  (FINISHED after a clean exit, FAILED otherwise) as with any skein driver. Where the
  container's shell did not source ``BASH_ENV``, the master script runs the scheduler
  itself, after the JVM (into the same ``scheduler.log``). Starting
  the scheduler in a container of its own would cost an allocation round (about two
  seconds) and starting it as the master script the JVM's start-up (about two more).
  The same script gives the ApplicationMaster's JVM (only it) a faster heartbeat to the
  ResourceManager (``c.YarnBackend.master_heartbeat_interval``; skein sleeps 5 s between
  calls while idle, so a scale() waited up to 6 s for its containers);
* ``worker``: no containers at submit; :meth:`~YarnBackend.start_worker` adds one per
  Flotilla worker (``ApplicationClient.add_container``) with the worker's name and the
  scheduler's address in its environment, :meth:`~YarnBackend.stop_worker` kills it.
  Workers serve no dashboard (nothing routes to a worker's, and it costs each worker
  the import of bokeh).

The cluster's TLS certificate and key travel as application-visibility skein files (the
driver copies them into the owner's staging directory; the local copies live in a 0700
temporary directory only while submitting). Applications are tagged with the launcher's
``c.YarnBackend.instance`` and the cluster's name and owner, so a start that finds a live
application of its cluster adopts it instead of submitting a second one (and kills any
duplicates), and a stop kills it even when the checkpoint does not name it. A worker's
container id is also kept in the application's skein key-value store under the worker's
name, so a restarted start adopts it.

Checkpoints: ``{"app_id": ...}`` for a cluster, ``{"app_id": ..., "container": "worker_3"}``
for a worker (skein's service-and-instance id).

Logs: read from the NodeManagers' log directories (``c.YarnBackend.nodemanager_log_dirs``,
the value of ``yarn.nodemanager.log-dirs`` as mounted where the launcher runs). Neither
the NodeManager REST API nor aggregated logs (``yarn logs``) are read yet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import skein
from traitlets import Float, Integer, List, Unicode, default

from .base import (
    Backend,
    BackendError,
    ChecksAtOnce,
    ClusterConfig,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
)
from .commands import CERT_FILE, KEY_FILE, gateway_environment, scheduler_command, worker_command

__all__ = [
    "YarnBackend",
    "YarnSettings",
    "application_spec",
    "application_status",
    "container_status",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEDULER = "scheduler"
WORKER = "worker"
#: YARN states of an application that has not ended.
LIVE_STATES = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")
#: skein states of a container that has not ended.
LIVE_CONTAINER_STATES = ("WAITING", "REQUESTED", "RUNNING")
ALL_CONTAINER_STATES = (*LIVE_CONTAINER_STATES, "SUCCEEDED", "FAILED", "KILLED")
#: The first line each worker container writes to its log: how read_logs names it.
WORKER_LOG_MARKER = "flotilla worker "
#: Files of the ApplicationMaster's container: what BASH_ENV names, and what it starts.
SCHEDULER_START = "flotilla-start-scheduler.sh"
SCHEDULER_SCRIPT = "flotilla-scheduler.sh"
#: The FIFO the scheduler's exit status travels on, to skein's master script.
SCHEDULER_EXIT = ".flotilla-scheduler-exit"
# Placeholders for the per-container values of a worker's command line.
_NAME_SLOT = "@@FLOTILLA_WORKER_NAME@@"
_ADDRESS_SLOT = "@@FLOTILLA_SCHEDULER_ADDRESS@@"
_KV_PREFIX = "flotilla-worker/"


class YarnUnavailable(RuntimeError):
    """YARN (the driver, the RM, an ApplicationMaster) did not answer: retried later."""


# -- pure parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class YarnSettings:
    """The ``c.YarnClusterConfig`` fields of one cluster (``ClusterConfig.extra``)."""

    queue: str = "default"
    localize_files: Mapping[str, Any] = field(default_factory=dict)
    scheduler_setup: str = ""
    worker_setup: str = ""

    @classmethod
    def of(cls, config: ClusterConfig) -> YarnSettings:
        extra = config.extra
        files = extra.get("localize_files") or {}
        if not isinstance(files, dict):
            raise BackendError("c.YarnClusterConfig.localize_files must be a dict")
        return cls(
            queue=str(extra.get("queue") or "default"),
            localize_files=files,
            scheduler_setup=str(extra.get("scheduler_setup") or ""),
            worker_setup=str(extra.get("worker_setup") or ""),
        )


def _mib(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / 2**20))


def _vcores(cores: float) -> int:
    return max(1, math.ceil(cores))


def cluster_tags(instance: str, cluster: ClusterSpec) -> set[str]:
    """The tags of a cluster's application (YARN lowercases tags)."""
    return {
        f"flotilla-instance:{instance}".lower(),
        f"flotilla-cluster:{cluster.name}".lower(),
        f"flotilla-owner:{cluster.owner}".lower(),
    }


def _script(setup: str, argv: list[str]) -> str:
    quoted = " ".join(shlex.quote(part) for part in argv)
    quoted = quoted.replace(_NAME_SLOT, '"$DASK_GATEWAY_WORKER_NAME"')
    quoted = quoted.replace(_ADDRESS_SLOT, '"$FLOTILLA_SCHEDULER_ADDRESS"')
    return "set -e\n" + (f"{setup}\n" if setup.strip() else "") + f"exec {quoted}\n"


#: The directory (in the ApplicationMaster's container) of the yarn-site.xml that sets the
#: ApplicationMaster's heartbeat, put first on the JVM's classpath.
AM_CONF_DIR = ".flotilla-am-conf"
#: What skein's ApplicationMaster derives its heartbeat from: it calls the ResourceManager
#: every min(5 s, this / 2) while idle and every min(1 s, that) while containers are pending,
#: and sleeps through requests that arrive meanwhile (skein 0.8.2).
AM_HEARTBEAT_KEY = "yarn.am.liveness-monitor.expiry-interval-ms"


def _am_heartbeat_override(interval: float) -> str:
    """Shell lines giving the ApplicationMaster's JVM a yarn-site.xml that includes the
    container's own ($HADOOP_CONF_DIR/yarn-site.xml) and then sets AM_HEARTBEAT_KEY so
    that skein heartbeats every ``interval`` seconds. Only that JVM reads the value: the
    ResourceManager keeps its own, so its liveness check of ApplicationMasters is as the
    site configured it. Where the container has no readable $HADOOP_CONF_DIR/yarn-site.xml,
    nothing changes (skein's 5 s)."""
    if interval <= 0:
        return ""
    value = max(2, round(interval * 2000))
    return (
        'if [ -r "${HADOOP_CONF_DIR:-/nonexistent}/yarn-site.xml" ]; then\n'
        f"  mkdir -p {AM_CONF_DIR}\n"
        f"  cat > {AM_CONF_DIR}/yarn-site.xml <<FLOTILLA_XML\n"
        '<?xml version="1.0"?>\n'
        '<configuration xmlns:xi="http://www.w3.org/2001/XInclude">\n'
        '  <xi:include href="file://$HADOOP_CONF_DIR/yarn-site.xml"/>\n'
        f"  <property><name>{AM_HEARTBEAT_KEY}</name><value>{value}</value></property>\n"
        "</configuration>\n"
        "FLOTILLA_XML\n"
        f'  export CLASSPATH="$PWD/{AM_CONF_DIR}:$CLASSPATH"\n'
        "fi\n"
    )


def scheduler_start_script(am_heartbeat: float = 0.0) -> str:
    """What ``BASH_ENV`` sources in the ApplicationMaster's container (module docstring),
    with the ApplicationMaster's heartbeat every ``am_heartbeat`` seconds (0: skein's)."""
    return (
        "# Sourced (BASH_ENV) by the shell that starts the ApplicationMaster's JVM.\n"
        "unset BASH_ENV\n" + _am_heartbeat_override(am_heartbeat) + f"mkfifo {SCHEDULER_EXIT}\n"
        f'( bash ./{SCHEDULER_SCRIPT}; echo "$?" > {SCHEDULER_EXIT} ) '
        f'< /dev/null > "${{LOG_DIRS%%,*}}/{SCHEDULER}.log" 2>&1 &\n'
    )


#: skein's master script: the application lives as long as the scheduler, ends as it does.
#: Where the container's shell did not source BASH_ENV (no FIFO), it runs the scheduler
#: itself, after the JVM, as dask-gateway-server does.
MASTER_SCRIPT = (
    f"if [ ! -p {SCHEDULER_EXIT} ]; then\n"
    '  echo "BASH_ENV was not sourced: starting the scheduler after the JVM" >&2\n'
    f'  exec bash ./{SCHEDULER_SCRIPT} > "${{LOG_DIRS%%,*}}/{SCHEDULER}.log" 2>&1\n'
    "fi\n"
    f"read -r status < {SCHEDULER_EXIT}\n"
    'echo "the scheduler exited with status $status"\n'
    'exit "$status"\n'
)


def _localized(files: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in files.items():
        try:
            if isinstance(item, str):
                out[name] = skein.File(source=item)
            else:
                out[name] = skein.File.from_dict(dict(item))
        except (TypeError, ValueError) as exc:
            raise BackendError(f"c.YarnClusterConfig.localize_files[{name!r}]: {exc}") from None
    return out


def write_scheduler_files(
    cluster: ClusterSpec, directory: Path, host: str, am_heartbeat: float = 0.0
) -> dict[str, Path]:
    """The scheduler's scripts (see the module docstring) in ``directory``, by name."""
    settings = YarnSettings.of(cluster.config)
    texts = {
        SCHEDULER_START: scheduler_start_script(am_heartbeat),
        SCHEDULER_SCRIPT: _script(
            settings.scheduler_setup, scheduler_command(cluster.config, host)
        ),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / name
        paths[name].write_text(text)
    return paths


def application_spec(
    cluster: ClusterSpec,
    *,
    cert_path: str,
    key_path: str,
    scheduler_files: Mapping[str, Path],
    instance: str,
    name_prefix: str = "flotilla-",
    master_memory_mib: int = 512,
    master_vcores: int = 1,
    master_java_options: Sequence[str] = (),
    host: str = "0.0.0.0",
) -> Any:
    """The skein ``ApplicationSpec`` of ``cluster``: the scheduler in the master's
    container (``scheduler_files``: :func:`write_scheduler_files`), no workers yet."""
    config = cluster.config
    settings = YarnSettings.of(config)
    secrets = {
        CERT_FILE: skein.File(source=cert_path, visibility="application"),
        KEY_FILE: skein.File(source=key_path, visibility="application"),
    }
    files = {**_localized(settings.localize_files), **secrets}
    master_files = {
        **files,
        **{
            name: skein.File(source=str(path), visibility="application")
            for name, path in scheduler_files.items()
        },
    }
    scheduler_env = {
        **config.environment,
        **gateway_environment(cluster, CERT_FILE, KEY_FILE, None),
        "BASH_ENV": SCHEDULER_START,
    }
    if master_java_options:
        scheduler_env["JAVA_TOOL_OPTIONS"] = " ".join(master_java_options)
    worker_env = {
        **config.environment,
        **gateway_environment(cluster, CERT_FILE, KEY_FILE, "-"),
    }
    del worker_env["DASK_GATEWAY_WORKER_NAME"]  # per container (start_worker)
    worker_argv = worker_command(config, _NAME_SLOT, _ADDRESS_SLOT, host, dashboard=False)
    worker_setup = f'echo "{WORKER_LOG_MARKER}$DASK_GATEWAY_WORKER_NAME" >&2\n' + (
        settings.worker_setup
    )
    services = {
        WORKER: skein.Service(
            instances=0,
            max_restarts=0,
            allow_failures=True,
            resources=skein.Resources(
                memory=_mib(config.worker_memory), vcores=_vcores(config.worker_cores)
            ),
            files=files,
            env=worker_env,
            script=_script(worker_setup, worker_argv),
        ),
    }
    return skein.ApplicationSpec(
        name=f"{name_prefix}{cluster.name} ({cluster.owner})",
        queue=settings.queue,
        user=cluster.owner,
        tags=cluster_tags(instance, cluster),
        max_attempts=1,
        master=skein.Master(
            resources=skein.Resources(
                memory=_mib(config.scheduler_memory) + master_memory_mib,
                vcores=max(master_vcores, _vcores(config.scheduler_cores)),
            ),
            files=master_files,
            env=scheduler_env,
            script=MASTER_SCRIPT,
        ),
        services=services,
    )


def _queue_hint(diagnostics: str) -> str:
    text = " ".join(diagnostics.split())
    if "queue" in text.lower() and ("unknown" in text.lower() or "not exist" in text.lower()):
        return f"c.YarnClusterConfig.queue: {text}"
    return text


def application_status(report: Any) -> ProcessStatus:
    """A cluster's status from its application's report (YARN's diagnostics as reason)."""
    state = str(report.state)
    if state in LIVE_STATES:
        return ProcessStatus(True)
    diagnostics = _queue_hint(str(report.diagnostics or "")) or "no diagnostics"
    return ProcessStatus(
        False,
        f"YARN application {report.id} {state} ({report.final_status}): {diagnostics}",
    )


def container_status(container: Any) -> ProcessStatus:
    """A worker's status from its skein container (exit message as reason)."""
    state = str(container.state)
    if state in LIVE_CONTAINER_STATES:
        return ProcessStatus(True)
    message = " ".join(str(container.exit_message or "").split()) or "no diagnostics"
    ident = container.yarn_container_id or f"{container.service_name}_{container.instance}"
    return ProcessStatus(False, f"YARN container {ident} {state}: {message}")


def _tail(path: Path, nbytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# -- the backend --------------------------------------------------------------------------


class YarnBackend(ChecksAtOnce, Backend):
    """The ``yarn`` backend: each cluster one YARN application, submitted for its owner."""

    backend_name = "yarn"
    stops_workers_with_cluster = True

    principal = Unicode(
        "",
        help=(
            "Kerberos principal of the service user (with c.YarnBackend.keytab) for every "
            "YARN call. Empty: simple authentication, or the launcher's ticket cache."
        ),
        config=True,
    )
    keytab = Unicode(
        "", help="Keytab holding c.YarnBackend.principal (checked at start-up).", config=True
    )
    hadoop_conf_dir = Unicode(
        help="Hadoop configuration directory the skein driver reads (default: $HADOOP_CONF_DIR).",
        config=True,
    )
    instance = Unicode(
        "flotilla",
        help=(
            "Marks this launcher's applications (a tag): a start or restart adopts only "
            "applications carrying it. Distinct per Flotilla deployment sharing a YARN."
        ),
        config=True,
    )
    application_name_prefix = Unicode(
        "flotilla-", help="Prefix of every application's name.", config=True
    )
    driver_log = Unicode(
        "", help="File the skein driver logs to; empty: the launcher's stderr.", config=True
    )
    driver_java_options = List(
        Unicode(), help="Extra JVM options of the skein driver.", config=True
    )
    security_dir = Unicode(
        "",
        help=(
            "Directory of the skein credentials (skein.crt, skein.pem) the driver and the "
            "ApplicationMasters share; must persist across launcher restarts. Empty: "
            "skein's default ($SKEIN_CONFIG or ~/.skein, created if missing)."
        ),
        config=True,
    )
    master_memory = Integer(
        384,
        help=(
            "MiB of each ApplicationMaster's JVM (skein's, 128 MiB of heap), added to the "
            "scheduler's memory in the container the two share."
        ),
        config=True,
    )
    master_vcores = Integer(
        1,
        help="Least virtual cores of the ApplicationMaster's container (else the scheduler's).",
        config=True,
    )
    master_java_options = List(
        Unicode(),
        ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"],
        help=(
            "JVM options of each ApplicationMaster (as JAVA_TOOL_OPTIONS). The default "
            "leaves out the optimizing compiler and the parallel collector, which cost the "
            "scheduler starting beside it CPU and buy a small, mostly idle JVM nothing."
        ),
        config=True,
    )
    master_heartbeat_interval = Float(
        0.5,
        help=(
            "Seconds between each ApplicationMaster's calls to the ResourceManager (at "
            "most 5 s, and 1 s while containers are pending). A worker's container is "
            "asked for at the next call and received at one after, so this bounds how "
            "soon scale() gets containers. 0 keeps skein's own: 5 s idle, 1 s pending. "
            "Each cluster costs the ResourceManager 1/interval calls a second."
        ),
        config=True,
    )
    host = Unicode(
        "0.0.0.0",
        help="Interface schedulers and workers listen on in their containers.",
        config=True,
    )
    call_timeout = Float(
        60.0,
        help="Seconds any one YARN call (driver, RM, ApplicationMaster) may take.",
        config=True,
    )
    nodemanager_log_dirs = List(
        Unicode(),
        help=(
            "The NodeManagers' yarn.nodemanager.log-dirs as readable by the launcher "
            "(<dir>/<application>/<container>/*.log); empty: no logs."
        ),
        config=True,
    )

    @default("hadoop_conf_dir")
    def _default_conf_dir(self) -> str:
        return os.environ.get("HADOOP_CONF_DIR", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="yarn")
        self._lock = threading.Lock()
        self._client: Any = None
        self._security: Any = None
        self._apps: dict[str, Any] = {}

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread pool, bounded by ``call_timeout``."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.call_timeout)
        except TimeoutError:
            raise YarnUnavailable(
                f"YARN did not answer {what} within {self.call_timeout:g}s "
                "(c.YarnBackend.call_timeout)"
            ) from None

    def _start_driver(self) -> Any:
        if self.hadoop_conf_dir:
            os.environ["HADOOP_CONF_DIR"] = self.hadoop_conf_dir
        if self._security is None:
            self._security = self._credentials()
        client = skein.Client(
            security=self._security,
            principal=self.principal or None,
            keytab=self.keytab or None,
            log=self.driver_log or None,
            java_options=list(self.driver_java_options) or None,
        )
        log.info("skein driver started (pid %s) at %s", self.driver_pid(client), client.address)
        return client

    def _credentials(self) -> Any:
        """skein's credentials from ``security_dir``, created (0600) on first use."""
        if not self.security_dir:
            return skein.Security.from_default()
        directory = Path(self.security_dir)
        if not (directory / "skein.crt").exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            skein.Security.new_credentials().to_directory(str(directory))
        return skein.Security.from_directory(str(directory))

    @staticmethod
    def driver_pid(client: Any) -> int | None:
        proc = getattr(client, "_proc", None)
        return None if proc is None else int(proc.pid)

    def _driver(self) -> Any:
        """The live driver client; a dead driver is logged and restarted (blocking)."""
        with self._lock:
            proc = getattr(self._client, "_proc", None)
            if self._client is not None and proc is not None and proc.poll() is not None:
                log.warning(
                    "skein driver (pid %s) exited with %s; restarting it",
                    proc.pid,
                    proc.returncode,
                )
                self._client = None
                self._apps.clear()
                self.changed()
            if self._client is None:
                self._client = self._start_driver()
            return self._client

    def _app(self, app_id: str) -> Any:
        """An ApplicationClient of a running application's master (cached)."""
        client = self._driver()
        app = self._apps.get(app_id)
        if app is None:
            app = client.connect(app_id, wait=False, security=self._security)
            self._apps[app_id] = app
        return app

    def _forget(self, app_id: str) -> None:
        app = self._apps.pop(app_id, None)
        if app is not None:
            app.close()

    def _live_apps(self) -> list[Any]:
        """Reports of this launcher's live applications: ONE ResourceManager query."""
        marker = f"flotilla-instance:{self.instance}".lower()
        reports = self._driver().get_applications(states=LIVE_STATES)
        return [r for r in reports if marker in r.tags]

    def _apps_of(self, cluster: ClusterSpec) -> list[Any]:
        tag = f"flotilla-cluster:{cluster.name}".lower()
        return sorted(
            (r for r in self._live_apps() if tag in r.tags), key=lambda r: (r.start_time, r.id)
        )

    def _kill(self, app_id: str, owner: str) -> None:
        self._forget(app_id)
        try:
            self._driver().kill_application(app_id, user=owner)
        except skein.exceptions.SkeinError as exc:
            log.info("kill %s: %s", app_id, exc)

    # -- lifecycle --------------------------------------------------------------------------

    def _check_keytab(self) -> None:
        if bool(self.principal) != bool(self.keytab):
            raise SystemExit("c.YarnBackend.principal and c.YarnBackend.keytab go together")
        if not self.keytab:
            return
        if not os.access(self.keytab, os.R_OK):
            raise SystemExit(f"c.YarnBackend.keytab {self.keytab!r} is not a readable file")
        try:
            done = subprocess.run(
                ["kinit", "-k", "-t", self.keytab, "-c", "MEMORY:flotilla-check", self.principal],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            log.warning("no kinit: c.YarnBackend.keytab not checked beyond being readable")
            return
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"c.YarnBackend.keytab: no answer from the KDC for {self.principal} within 30s"
            ) from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["kinit failed"])[-1]
            raise SystemExit(
                f"c.YarnBackend.keytab {self.keytab!r} does not log in "
                f"c.YarnBackend.principal {self.principal!r}: {last}"
            )

    async def start(self) -> None:
        """Check the keytab, start the driver, ask the RM once (a one-line SystemExit
        naming the setting when any of it fails)."""
        self._check_keytab()
        try:
            await self._run("the driver's start", self._driver)
        except (YarnUnavailable, skein.exceptions.SkeinError, OSError) as exc:
            raise SystemExit(f"skein driver failed to start: {_one_line(exc)}") from None
        try:
            await self._run("a list of applications", self._live_apps)
        except (YarnUnavailable, skein.exceptions.SkeinError, OSError) as exc:
            raise SystemExit(
                "YARN ResourceManager unreachable (yarn.resourcemanager.address in "
                f"c.YarnBackend.hadoop_conf_dir={self.hadoop_conf_dir!r}): {_one_line(exc)}"
            ) from None

    async def close(self) -> None:
        """Stop the driver by PID (clusters keep running)."""
        with self._lock:
            client, self._client = self._client, None
            for app in self._apps.values():
                app.close()
            self._apps.clear()
        if client is not None:
            proc = getattr(client, "_proc", None)
            client.close()
            if proc is not None:
                try:
                    await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
                except TimeoutError:
                    log.warning("skein driver (pid %s) ignored EOF; killing it", proc.pid)
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- clusters ---------------------------------------------------------------------------

    def _submit(self, cluster: ClusterSpec) -> str:
        with tempfile.TemporaryDirectory(prefix="flotilla-yarn-") as tmp:
            os.chmod(tmp, 0o700)
            cert, key = Path(tmp, CERT_FILE), Path(tmp, KEY_FILE)
            for path, text in ((cert, cluster.tls_cert), (key, cluster.tls_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            spec = application_spec(
                cluster,
                cert_path=str(cert),
                key_path=str(key),
                scheduler_files=write_scheduler_files(
                    cluster, Path(tmp), self.host, self.master_heartbeat_interval
                ),
                instance=self.instance,
                name_prefix=self.application_name_prefix,
                master_memory_mib=self.master_memory,
                master_vcores=self.master_vcores,
                master_java_options=self.master_java_options,
                host=self.host,
            )
            try:
                return str(self._driver().submit(spec))
            except skein.exceptions.DriverError as exc:
                refused = _one_line(exc)
            # YARN's refusal of a queue it does not know reads "exception: null": ask.
            queue = str(spec.queue)
            try:
                self._driver().get_queue(queue)
            except (skein.exceptions.DriverError, ValueError) as exc:
                raise BackendError(
                    f"c.YarnClusterConfig.queue: YARN has no queue {queue!r} ({_one_line(exc)})"
                ) from None
            raise BackendError(f"YARN refused the application: {refused}")

    def _accepted(self, app_id: str) -> ProcessStatus:
        """Wait until the RM accepted (or rejected) the application."""
        deadline = time.monotonic() + self.call_timeout / 2
        while True:
            report = self._driver().application_report(app_id)
            status = application_status(report)
            if not status.running or str(report.state) in ("ACCEPTED", "RUNNING"):
                return status
            if time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        YarnSettings.of(cluster.config)  # bad settings fail before anything is submitted
        found = await self._run("a list of applications", self._apps_of, cluster)
        if found:
            keep, *duplicates = found
            for dup in duplicates:
                log.warning("cluster %s: killing duplicate application %s", cluster.name, dup.id)
                await self._run("a kill", self._kill, dup.id, cluster.owner)
            log.info("cluster %s: adopting live application %s", cluster.name, keep.id)
            yield {"app_id": keep.id}
            return
        app_id = await self._run("a submit", self._submit, cluster)
        log.info("cluster %s: submitted %s for %s", cluster.name, app_id, cluster.owner)
        yield {"app_id": app_id}
        status = await self._run("an application report", self._accepted, app_id)
        if not status.running:
            raise BackendError(status.reason)

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        ids = [r.id for r in await self._run("a list of applications", self._apps_of, cluster)]
        if state.get("app_id") and state["app_id"] not in ids:
            ids.append(str(state["app_id"]))
        for app_id in ids:
            await self._run("a kill", self._kill, app_id, cluster.owner)

    def _statuses(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        live = {r.id: r for r in self._live_apps()}
        reports: dict[str, Any] = dict(live)
        for _, state in clusters:
            app_id = str(state.get("app_id", ""))
            if app_id and app_id not in reports:
                # Ended (or unknown): asked once, when it ends.
                try:
                    reports[app_id] = self._driver().application_report(app_id)
                except skein.exceptions.SkeinError as exc:
                    reports[app_id] = None
                    log.info("report of %s: %s", app_id, exc)
                self._forget(app_id)
        cluster_statuses = []
        for _, state in clusters:
            report = reports.get(str(state.get("app_id", "")))
            cluster_statuses.append(
                ProcessStatus(False, "YARN has no record of the application")
                if report is None
                else application_status(report)
            )
        containers: dict[str, dict[str, Any] | None] = {}
        for app_id in {str(state.get("app_id", "")) for _, state in workers}:
            if app_id not in live or str(live[app_id].state) != "RUNNING":
                continue
            try:
                found = self._app(app_id).get_containers(
                    services=[WORKER], states=ALL_CONTAINER_STATES
                )
                containers[app_id] = {f"{c.service_name}_{c.instance}": c for c in found}
            except (skein.exceptions.SkeinError, ConnectionError) as exc:
                log.info("containers of %s: %s", app_id, exc)
                self._forget(app_id)
                containers[app_id] = None
        worker_statuses = []
        for _, state in workers:
            app_id = str(state.get("app_id", ""))
            if app_id not in live:
                worker_statuses.append(ProcessStatus(False, f"YARN application {app_id} ended"))
                continue
            by_id = containers.get(app_id)
            if by_id is None:  # not RUNNING yet, or its master did not answer
                worker_statuses.append(ProcessStatus(True))
                continue
            container = by_id.get(str(state.get("container", "")))
            worker_statuses.append(
                ProcessStatus(False, "YARN has no record of the container")
                if container is None
                else container_status(container)
            )
        return cluster_statuses, worker_statuses

    async def check(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        """Every status in one go: ONE ResourceManager query for all of this launcher's
        live applications (``get_applications``, filtered by the instance tag), one
        report per application that ended since the last check, and one
        ``get_containers`` call per running application that has workers to check (its
        ApplicationMaster, not the RM)."""
        return await self._run("a status check", self._statuses, clusters, workers)

    # -- workers ----------------------------------------------------------------------------

    def _wait_running(self, app_id: str) -> None:
        """Wait (bounded) until the application's master runs: containers are added there."""
        deadline = time.monotonic() + self.call_timeout
        while True:
            report = self._driver().application_report(app_id)
            status = application_status(report)
            if not status.running:
                raise BackendError(status.reason)
            if str(report.state) == "RUNNING":
                return
            if time.monotonic() > deadline:
                raise YarnUnavailable(f"application {app_id} not RUNNING yet")
            time.sleep(0.2)

    def _add_worker(self, worker: WorkerSpec, app_id: str) -> str:
        self._wait_running(app_id)
        app = self._app(app_id)
        key = _KV_PREFIX + worker.name
        known = app.kv.get(key)
        if known is not None:
            return bytes(known).decode()
        address = worker.scheduler_address.split("://", 1)[-1]
        container = app.add_container(
            WORKER,
            env={"DASK_GATEWAY_WORKER_NAME": worker.name, "FLOTILLA_SCHEDULER_ADDRESS": address},
        )
        ident = f"{container.service_name}_{container.instance}"
        app.kv[key] = ident.encode()
        return ident

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        app_id = await self._cluster_app(worker.cluster)
        ident = await self._run("add_container", self._add_worker, worker, app_id)
        yield {"app_id": app_id, "container": ident}

    async def _cluster_app(self, cluster: ClusterSpec) -> str:
        found = await self._run("a list of applications", self._apps_of, cluster)
        if not found:
            raise BackendError(f"cluster {cluster.name} has no running YARN application")
        return str(found[0].id)

    def _kill_container(self, app_id: str, ident: str) -> None:
        try:
            self._app(app_id).kill_container(ident)
        except (skein.exceptions.SkeinError, ConnectionError) as exc:
            log.info("kill %s of %s: %s", ident, app_id, exc)

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        app_id, ident = str(state.get("app_id", "")), str(state.get("container", ""))
        if app_id and ident:
            await self._run("kill_container", self._kill_container, app_id, ident)

    # -- logs -------------------------------------------------------------------------------

    def _logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        app_id = str(state.get("app_id", ""))
        if not app_id:
            return {}
        scheduler: list[tuple[str, Path]] = []
        master: list[tuple[str, Path]] = []
        workers: list[tuple[float, str, Path]] = []
        for root in self.nodemanager_log_dirs:
            for path in sorted(Path(root, app_id).glob("container_*/*.log")):
                if path.name == f"{SCHEDULER}.log":
                    scheduler.append((SCHEDULER, path))
                elif path.name == "application.master.log":
                    master.append(("application-master", path))
                elif path.name == f"{WORKER}.log":
                    head = _tail_head(path)
                    name = (
                        head[len(WORKER_LOG_MARKER) :]
                        if head.startswith(WORKER_LOG_MARKER)
                        else path.parent.name
                    )
                    try:
                        mtime = path.stat().st_mtime
                    except OSError:
                        continue
                    workers.append((mtime, f"worker-{name}", path))
        ordered = [*scheduler, *master, *((n, p) for _, n, p in sorted(workers, reverse=True))]
        out: dict[str, str] = {}
        left = total_bytes
        for name, path in ordered:
            if left <= 0:
                break
            text = _tail(path, min(tail_bytes, left))
            out[name] = out.get(name, "") + text
            left -= len(text.encode())
        return out

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        """The scheduler's, the ApplicationMaster's (``application-master``) and the
        workers' container logs from ``c.YarnBackend.nodemanager_log_dirs`` (running and
        ended containers alike, as long as the NodeManagers keep them)."""
        return await asyncio.to_thread(self._logs, cluster, state, tail_bytes, total_bytes)


def _tail_head(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.readline(300).decode(errors="replace").strip()
    except OSError:
        return ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
