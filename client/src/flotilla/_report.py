"""What the gateway reports: a cluster's status and report, a user's usage and quota."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any, TypedDict

from google.protobuf.timestamp_pb2 import Timestamp

from flotilla.registry.v1 import types_pb2

from .security import GatewaySecurity

__all__ = ["ClusterReport", "ClusterStatus", "Quota", "UsageReport", "WorkerReport"]


class ClusterStatus(enum.IntEnum):
    """A cluster's status.

    Attributes
    ----------
    PENDING : ClusterStatus
        The cluster is starting.
    RUNNING : ClusterStatus
        The cluster is running.
    STOPPING : ClusterStatus
        The cluster is stopping, but not fully stopped.
    STOPPED : ClusterStatus
        The cluster was shut down by user or admin request (or went idle).
    FAILED : ClusterStatus
        Something went wrong; the report's ``reason`` says what, when known.
    """

    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5

    @classmethod
    def from_name(cls, name: str) -> ClusterStatus:
        """The status called ``name`` (case-insensitive).

        Parameters
        ----------
        name : str

        Returns
        -------
        status : ClusterStatus
        """
        try:
            return cls[name.upper()]
        except (KeyError, AttributeError):
            raise ValueError(f"{name!r} is not a valid {cls.__name__}") from None

    @classmethod
    def _create(cls, x: ClusterStatus | str | int) -> ClusterStatus:
        if isinstance(x, cls):
            return x
        if isinstance(x, str):
            return cls.from_name(x)
        try:
            return cls(x)
        except ValueError:
            raise ValueError(f"{x!r} is not a valid {cls.__name__}") from None


def _timestamp(ts: Timestamp) -> datetime:
    # Local naive time, like dask-gateway's ``datetime.fromtimestamp(ms / 1000)``.
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9)


class ClusterReport:
    """A report on a cluster's state.

    Attributes
    ----------
    name : str
        The cluster's name, a unique id.
    options : dict
        The cluster options it was created with (defaults filled in).
    status : ClusterStatus
        The cluster's status.
    scheduler_address : str or None
        ``gateway://<proxy>/<name>``, or None if the cluster is not running.
    dashboard_link : str or None
        A link to the dashboard, or None if there is none (yet).
    start_time : datetime.datetime
        When the cluster was created (local time).
    stop_time : datetime.datetime or None
        When the cluster stopped, or None while it is active.
    tls_cert, tls_key : str or None
        The cluster's TLS credentials (PEM), present only while it is running.
    owner : str or None
        The user the cluster belongs to.
    backend : str or None
        The launcher backend running it.
    reason : str or None
        Why the cluster failed or stopped, when the gateway knows.
    requested_workers, running_workers : int or None
        Workers asked for, and workers connected.
    cores : float or None
        The cores the scheduler and the requested workers reserve (0 once ended).
    memory : int or None
        The memory they reserve, in bytes (0 once ended).
    """

    __slots__ = (
        "backend",
        "cores",
        "dashboard_link",
        "memory",
        "name",
        "options",
        "owner",
        "reason",
        "requested_workers",
        "running_workers",
        "scheduler_address",
        "start_time",
        "status",
        "stop_time",
        "tls_cert",
        "tls_key",
    )

    def __init__(
        self,
        name: str,
        options: dict[str, Any],
        status: ClusterStatus,
        scheduler_address: str | None,
        dashboard_link: str | None,
        start_time: datetime | None,
        stop_time: datetime | None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        owner: str | None = None,
        backend: str | None = None,
        reason: str | None = None,
        requested_workers: int | None = None,
        running_workers: int | None = None,
        cores: float | None = None,
        memory: int | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.status = status
        self.scheduler_address = scheduler_address
        self.dashboard_link = dashboard_link
        self.start_time = start_time
        self.stop_time = stop_time
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.owner = owner
        self.backend = backend
        self.reason = reason
        self.requested_workers = requested_workers
        self.running_workers = running_workers
        self.cores = cores
        self.memory = memory

    def __repr__(self) -> str:
        return f"ClusterReport<name={self.name}, status={self.status.name}>"

    @property
    def security(self) -> GatewaySecurity | None:
        """A security object for connecting to this cluster, or None if not running."""
        if self.tls_key is None or self.tls_cert is None:
            return None
        return GatewaySecurity(tls_key=self.tls_key, tls_cert=self.tls_cert)

    @classmethod
    def _from_proto(
        cls, public_address: str, proxy_address: str, msg: types_pb2.Cluster
    ) -> ClusterReport:
        status = ClusterStatus._create(msg.status)
        return cls(
            name=msg.name,
            options=json.loads(msg.options_json) if msg.options_json else {},
            status=status,
            scheduler_address=(
                f"{proxy_address}/{msg.name}" if status is ClusterStatus.RUNNING else None
            ),
            dashboard_link=(
                f"{public_address}{msg.dashboard_route}" if msg.dashboard_route else None
            ),
            start_time=_timestamp(msg.start_time) if msg.HasField("start_time") else None,
            stop_time=_timestamp(msg.stop_time) if msg.HasField("stop_time") else None,
            tls_cert=msg.tls_cert or None,
            tls_key=msg.tls_key or None,
            owner=msg.owner or None,
            backend=msg.backend or None,
            reason=msg.reason or None,
            requested_workers=msg.requested_workers,
            running_workers=msg.running_workers,
            cores=msg.cores,
            memory=msg.memory_bytes,
        )


class WorkerReport:
    """One worker of a cluster, as :meth:`Gateway.list_workers` lists it.

    Attributes
    ----------
    name : str
        The worker's name (its process in the cluster's logs is ``worker-<name>``).
    status : ClusterStatus
        PENDING until it connects, RUNNING, STOPPING, STOPPED when it was asked to stop
        (a scale down), FAILED when it ended on its own.
    reason : str or None
        Why it failed or stopped, when the gateway knows: an exit code, a memory limit
        it exceeded, an image that cannot be pulled.
    start_time : datetime.datetime or None
        When the gateway asked for it (local time).
    stop_time : datetime.datetime or None
        When it ended, or None while it is active.
    """

    __slots__ = ("name", "reason", "start_time", "status", "stop_time")

    def __init__(
        self,
        name: str,
        status: ClusterStatus,
        reason: str | None,
        start_time: datetime | None,
        stop_time: datetime | None,
    ) -> None:
        self.name = name
        self.status = status
        self.reason = reason
        self.start_time = start_time
        self.stop_time = stop_time

    def __repr__(self) -> str:
        return f"WorkerReport<name={self.name}, status={self.status.name}>"

    @classmethod
    def _from_proto(cls, msg: types_pb2.Worker) -> WorkerReport:
        return cls(
            name=msg.name,
            status=ClusterStatus._create(msg.status),
            reason=msg.reason or None,
            start_time=_timestamp(msg.start_time) if msg.HasField("start_time") else None,
            stop_time=_timestamp(msg.stop_time) if msg.HasField("stop_time") else None,
        )


class Quota(TypedDict):
    """A user's limits (None for no limit), as in :meth:`Gateway.usage`."""

    max_clusters: float | None
    max_cores: float | None
    max_memory: float | None
    max_workers: float | None


class UsageReport(TypedDict):
    """What one user's active clusters reserve, their quota and their usage so far.

    ``memory`` is in bytes; ``clusters``, ``cores``, ``memory`` and ``workers`` count the
    schedulers and granted workers of active clusters.
    """

    user: str
    clusters: int
    cores: float
    memory: float
    workers: int
    quota: Quota
    core_hours: float
    memory_gib_hours: float
