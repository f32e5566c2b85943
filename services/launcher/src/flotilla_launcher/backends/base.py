"""The hook contract every launcher backend implements.

A backend knows how to run a cluster's scheduler and workers somewhere (local processes,
a batch system, ...). It holds no state of its own that matters across restarts: whatever
it needs to find a scheduler or worker again is the *checkpoint* it yields while starting,
which the reconciler stores in the registry (``state_json``) and hands back to every later
hook. Backends are found through the entry-point group ``flotilla.launcher_backends``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any, ClassVar

from flotilla_common import clusterconfig
from traitlets.config import Configurable

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendError",
    "ChecksAtOnce",
    "ClusterConfig",
    "ClusterSpec",
    "ProcessStatus",
    "WorkerSpec",
    "load_backend",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flotilla.launcher_backends"

# Cluster and worker names end up in paths and file names; the registry generates
# uuid4 hex names, anything outside this set is refused.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class BackendError(Exception):
    """A start or stop failure whose message is safe to show the cluster's owner."""


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is safe to use in a path, else raise :class:`BackendError`."""
    if not _NAME_RE.match(name):
        raise BackendError(f"invalid {kind} name {name!r}")
    return name


def _default(key: str) -> Any:
    """The default of ``c.ClusterConfig.<key>``: one definition for registry and launcher."""
    return clusterconfig.ClusterConfig.class_traits()[key].default()


@dataclass(frozen=True)
class ClusterConfig:
    """The resolved cluster configuration (``LaunchCluster.config_json``).

    Its fields are the keys of :data:`flotilla_common.clusterconfig.CORE_KEYS` launchers
    use, with the same defaults (``worker_threads`` is resolved by the registry).
    """

    scheduler_cmd: tuple[str, ...] = tuple(_default("scheduler_cmd"))
    worker_cmd: tuple[str, ...] = tuple(_default("worker_cmd"))
    scheduler_preload: str = _default("scheduler_preload")
    environment: Mapping[str, str] = field(default_factory=dict)
    worker_cores: float = _default("worker_cores")
    worker_threads: int = 1
    worker_memory: int = _default("worker_memory")
    scheduler_cores: float = _default("scheduler_cores")
    scheduler_memory: int = _default("scheduler_memory")
    adaptive_period: float = _default("adaptive_period")
    idle_timeout: float = _default("idle_timeout")
    heartbeat_period: float = _default("heartbeat_period")
    #: The keys this class does not name (the registry's limits, the fields of a
    #: backend's own ``<Backend>ClusterConfig`` such as ``partition``), as stored.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> ClusterConfig:
        """Parse ``config_json``; keys not named here go to ``extra``, missing ones take
        defaults.

        A single-string command is wrapped into a one-element list (never shell-split).
        """
        data: dict[str, Any] = json.loads(text) if text else {}
        if not isinstance(data, dict):
            raise BackendError("cluster configuration is not a JSON object")
        kwargs: dict[str, Any] = {}
        for key in ("scheduler_cmd", "worker_cmd"):
            if data.get(key) is not None:
                value = data[key]
                cmd = [value] if isinstance(value, str) else list(value)
                if not cmd or not all(isinstance(part, str) for part in cmd):
                    raise BackendError(f"{key} must be a non-empty list of strings")
                kwargs[key] = tuple(cmd)
        if data.get("scheduler_preload"):
            kwargs["scheduler_preload"] = str(data["scheduler_preload"])
        env = data.get("environment") or {}
        if not isinstance(env, dict):
            raise BackendError("environment must be a JSON object")
        kwargs["environment"] = {str(k): str(v) for k, v in env.items()}
        for key, conv in (
            ("worker_cores", float),
            ("worker_threads", int),
            ("worker_memory", int),
            ("scheduler_cores", float),
            ("scheduler_memory", int),
            ("adaptive_period", float),
            ("idle_timeout", float),
            ("heartbeat_period", float),
        ):
            if data.get(key) is not None:
                kwargs[key] = conv(data[key])
        named = {f.name for f in fields(cls)}
        kwargs["extra"] = {key: value for key, value in data.items() if key not in named}
        return cls(**kwargs)


@dataclass(frozen=True)
class ClusterSpec:
    """Everything a backend needs to start, check and stop one cluster."""

    name: str
    owner: str
    config: ClusterConfig
    tls_cert: str
    tls_key: str
    token: str
    api_url: str


@dataclass(frozen=True)
class WorkerSpec:
    """One worker of a cluster; ``scheduler_address`` is ``host:port`` of the TLS comm."""

    cluster: ClusterSpec
    name: str
    scheduler_address: str


@dataclass(frozen=True)
class ProcessStatus:
    """Result of a status check: still running, or gone and why (user-safe, no log text).

    ``responsive``: a running process that can run (not stopped): the launcher tells the
    registry a scheduler so seen is alive, and late heartbeats alone do not fail a busy
    one. A backend that cannot see inside a job (a batch system) leaves it True.
    """

    running: bool
    reason: str = ""
    responsive: bool = True


class ChecksAtOnce:
    """Mixin, listed before :class:`Backend`, for a backend whose :meth:`Backend.check`
    asks its resource manager once for schedulers and workers alike (a batch system, YARN,
    the Kubernetes watch cache): ``check_clusters`` and ``check_workers`` are that one
    query with the other half empty."""

    async def check(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        raise NotImplementedError

    async def check_clusters(
        self, clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        return (await self.check(clusters, []))[0]

    async def check_workers(
        self, workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        return (await self.check([], workers))[1]


class Backend(Configurable):
    """Base class of launcher backends.

    Subclasses are traitlets ``Configurable`` (their options live in ``c.<ClassName>``).
    Checkpoints are JSON-serialisable dicts; the reconciler stores them verbatim and passes
    the latest one back. Hooks raise :class:`BackendError` for failures the owner should
    see; anything else is logged and retried by the reconciler with backoff (start hooks:
    fail the cluster/worker). Every hook except :meth:`start`, :meth:`read_logs` and
    :meth:`close` must be overridden.
    """

    #: The name the registry assigns clusters to (``LaunchCluster.backend``).
    backend_name: str = ""

    #: Capability: :meth:`stop_cluster` stops the cluster's workers too (a resource
    #: manager that runs the whole cluster as one unit). The reconciler then stops the
    #: cluster and reports its workers stopped without calling :meth:`stop_worker` for
    #: each; workers retired while the cluster runs are still stopped one by one.
    stops_workers_with_cluster: ClassVar[bool] = False

    def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        """Start the scheduler, yielding checkpoint state as it progresses.

        The last yielded state must be enough for :meth:`check_clusters` and
        :meth:`stop_cluster`, even from a new launcher process. A launcher can die after
        starting the scheduler but before its checkpoint reached the registry; the next
        one calls this again, so find a scheduler a previous launcher started for this
        cluster and yield its checkpoint instead of starting a second one. Likewise,
        :meth:`stop_cluster` must stop such a scheduler (and such workers) even when the
        state it gets does not name them.
        """
        raise NotImplementedError

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        """Stop the scheduler (if running) and release what it held; idempotent."""
        raise NotImplementedError

    async def check_clusters(
        self, clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        """Status of many schedulers at once (one result per input, same order)."""
        raise NotImplementedError

    def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        """Start one worker, yielding checkpoint state; like :meth:`start_cluster`, adopt
        the worker a previous launcher started but did not report."""
        raise NotImplementedError

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        """Stop one worker (if running); idempotent."""
        raise NotImplementedError

    async def check_workers(
        self, workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        """Status of many workers at once (one result per input, same order)."""
        raise NotImplementedError

    async def check(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        """Status of many schedulers and workers at once: the launcher's periodic check.

        The default asks :meth:`check_clusters`, then :meth:`check_workers`. A backend whose
        status query is expensive (a batch system's) overrides it to ask once for both,
        and mixes in :class:`ChecksAtOnce`.
        """
        return (
            await self.check_clusters(clusters) if clusters else [],
            await self.check_workers(workers) if workers else [],
        )

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        """The output of the cluster's processes, exited ones included: process name
        (``"scheduler"``, ``"worker-<name>"``) -> the last ``tail_bytes`` bytes as text.

        The scheduler first, then workers most recently active first, until
        ``total_bytes`` are used. Called once the cluster has stopped (the registry keeps
        the result with the cluster's record) and when someone asks for an active
        cluster's logs. Optional: the default has no logs.
        """
        return {}

    async def start(self) -> None:
        """Called once when the launcher starts, before any other hook (optional)."""

    # -- pushing status changes -------------------------------------------------------------

    _change_listener: Callable[[], None] | None = None

    def on_change(self, listener: Callable[[], None] | None) -> None:
        """Set what :meth:`changed` calls (the reconciler sets it before :meth:`start`)."""
        self._change_listener = listener

    def changed(self) -> None:
        """Tell the launcher that something changed: run the status check soon.

        A backend that learns of a change between check periods (a watch event, a driver
        that restarted, a start that failed in the background) calls this instead of
        waiting for the next period. Any thread may call it, any number of times: calls
        before the check runs are coalesced into one :meth:`check`. Without a listener
        (a backend driven directly, in tests) it does nothing.
        """
        if self._change_listener is not None:
            self._change_listener()

    async def close(self) -> None:
        """Release backend resources when the launcher exits; never stops clusters."""


def load_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name`` in :data:`ENTRY_POINT_GROUP`."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    for ep in found:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise SystemExit(f"backend {name!r} ({ep.value}) is not a launcher Backend")
        return cls
    available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise SystemExit(f"unknown backend {name!r}; available: {', '.join(available) or 'none'}")
