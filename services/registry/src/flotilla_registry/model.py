"""Cluster and worker records: desired (target) and observed state, and the public status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["ClusterRecord", "Observed", "Status", "Target", "WorkerRecord", "now_ms"]


class Target(IntEnum):
    RUNNING = 1
    STOPPED = 2
    FAILED = 3


class Observed(IntEnum):
    CREATED = 1
    STARTING = 2
    RUNNING = 3
    STOPPED = 4


class Status(IntEnum):
    """The public status; values match dask-gateway's ClusterStatus."""

    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5


def now_ms() -> int:
    return int(time.time() * 1000)


def derive_status(target: Target, observed: Observed) -> Status:
    if observed == Observed.STOPPED:
        return Status.FAILED if target == Target.FAILED else Status.STOPPED
    if target != Target.RUNNING:
        return Status.STOPPING
    if observed == Observed.RUNNING:
        return Status.RUNNING
    return Status.PENDING


@dataclass
class WorkerRecord:
    name: str
    target: Target = Target.RUNNING
    observed: Observed = Observed.CREATED
    close_expected: bool = False
    state: str = ""
    reason: str = ""
    start_time: int = field(default_factory=now_ms)
    stop_time: int | None = None

    @property
    def finished(self) -> bool:
        return self.observed == Observed.STOPPED and self.target != Target.RUNNING

    @property
    def status(self) -> Status:
        return derive_status(self.target, self.observed)


@dataclass
class ClusterRecord:
    name: str
    owner: str
    backend: str
    options: str  # JSON text of the normalised user options
    config: str  # JSON text of the resolved cluster config
    token: str
    tls_cert: str
    tls_key: str
    target: Target = Target.RUNNING
    observed: Observed = Observed.CREATED
    reason: str = ""
    scheduler_address: str = ""
    dashboard_address: str = ""
    api_address: str = ""
    count: int = 0
    state: str = ""
    start_time: int = field(default_factory=now_ms)
    stop_time: int | None = None
    last_heartbeat: int | None = None
    revision: int = 0
    # Someone asked for the current logs (a growing number; the launcher answers it),
    # and the last request a launcher answered.
    logs_request: int = 0
    logs_answered: int = 0
    # Workers in a row that exited or timed out before connecting (worker_start_failure_limit).
    worker_start_failures: int = 0
    # Accounting (quotas.py): core-seconds and byte-seconds reserved up to accrued_until
    # (ms), and the cores and bytes reserved since then.
    core_seconds: float = 0.0
    memory_seconds: float = 0.0
    accrued_until: int | None = None
    accrued_cores: float = 0.0
    accrued_memory: float = 0.0
    # Dask clients connected at the latest heartbeat; None: unknown (a scheduler preload
    # that does not report them, e.g. dask-gateway's). And since when (ms) none has been:
    # set when a report of 0 follows one of more (or the first heartbeat reports 0),
    # None while a client is connected or the count is unknown (no_client_timeout).
    clients: int | None = None
    clients_gone_since: int | None = None
    # When (ms) the cluster's launcher last saw its scheduler process alive while its
    # heartbeats were late: a busy scheduler, not a dead one (heartbeat_timeout).
    seen_alive: int | None = None
    workers: dict[str, WorkerRecord] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return derive_status(self.target, self.observed)

    @property
    def finished(self) -> bool:
        return self.observed == Observed.STOPPED and self.target != Target.RUNNING

    @property
    def running_workers(self) -> int:
        return sum(
            1
            for w in self.workers.values()
            if w.target == Target.RUNNING and w.observed == Observed.RUNNING
        )

    @property
    def dashboard_route(self) -> str:
        if self.status == Status.RUNNING and self.dashboard_address:
            return f"/clusters/{self.name}/status"
        return ""
