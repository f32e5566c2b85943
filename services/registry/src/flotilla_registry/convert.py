"""Records to protobuf messages and to dask-gateway JSON reports."""

from __future__ import annotations

import json
from typing import Any

from flotilla.registry.v1 import internal_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from .model import ClusterRecord, Status, WorkerRecord
from .quotas import Shape

__all__ = [
    "cluster_json",
    "cluster_message",
    "launch_message",
    "web_json",
    "worker_json",
    "worker_message",
]


def _ts(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _reserved(c: ClusterRecord) -> tuple[float, float]:
    """Cores and bytes the scheduler and the requested workers reserve; 0 once ended."""
    if c.status not in (Status.PENDING, Status.RUNNING):
        return 0.0, 0.0
    usage = Shape.from_config_json(c.config).usage(c.count)
    return usage.cores, usage.memory


def cluster_message(c: ClusterRecord) -> types_pb2.Cluster:
    running = c.status == Status.RUNNING
    cores, memory = _reserved(c)
    msg = types_pb2.Cluster(
        name=c.name,
        status=int(c.status),
        dashboard_route=c.dashboard_route,
        start_time=_ts(c.start_time),
        options_json=c.options,
        tls_cert=c.tls_cert if running else "",
        tls_key=c.tls_key if running else "",
        owner=c.owner,
        backend=c.backend,
        reason=c.reason,
        requested_workers=c.count,
        running_workers=c.running_workers,
        cores=cores,
        memory_bytes=int(memory),
    )
    if c.stop_time is not None:
        msg.stop_time.CopyFrom(_ts(c.stop_time))
    return msg


def worker_message(w: WorkerRecord) -> types_pb2.Worker:
    msg = types_pb2.Worker(
        name=w.name, status=int(w.status), reason=w.reason, start_time=_ts(w.start_time)
    )
    if w.stop_time is not None:
        msg.stop_time.CopyFrom(_ts(w.stop_time))
    return msg


def worker_json(w: WorkerRecord) -> dict[str, Any]:
    """A worker as ``GET /api/v1/clusters/{name}/workers`` lists it."""
    return {
        "name": w.name,
        "status": w.status.name,
        "reason": w.reason,
        "start_time": w.start_time,
        "stop_time": w.stop_time,
    }


def cluster_json(c: ClusterRecord) -> dict[str, Any]:
    """The report the dask-gateway client parses: exactly these keys, no others."""
    running = c.status == Status.RUNNING
    return {
        "name": c.name,
        "dashboard_route": c.dashboard_route or None,
        "status": c.status.name,
        "start_time": c.start_time,
        "stop_time": c.stop_time,
        "options": json.loads(c.options),
        "tls_cert": c.tls_cert if running else None,
        "tls_key": c.tls_key if running else None,
    }


def web_json(c: ClusterRecord) -> dict[str, Any]:
    """What the web page shows of a cluster: never its TLS key or token."""
    cores, memory = _reserved(c)
    return {
        "name": c.name,
        "owner": c.owner,
        "backend": c.backend,
        "status": c.status.name,
        "reason": c.reason,
        "dashboard_route": c.dashboard_route or None,
        "start_time": c.start_time,
        "stop_time": c.stop_time,
        "options": json.loads(c.options),
        "requested_workers": c.count,
        "running_workers": c.running_workers,
        "cores": cores,
        "memory": memory,
    }


def launch_message(c: ClusterRecord, api_url: str) -> internal_pb2.LaunchCluster:
    return internal_pb2.LaunchCluster(
        name=c.name,
        owner=c.owner,
        backend=c.backend,
        target=int(c.target),
        observed=int(c.observed),
        config_json=c.config,
        tls_cert=c.tls_cert,
        tls_key=c.tls_key,
        token=c.token,
        api_url=api_url,
        state_json=c.state,
        revision=c.revision,
        scheduler_address=c.scheduler_address.split("://", 1)[-1],
        # Only an unanswered request: a restarted launcher must not answer old ones.
        logs_request=c.logs_request if c.logs_request > c.logs_answered else 0,
        workers=[
            internal_pb2.LaunchWorker(
                name=w.name, target=int(w.target), observed=int(w.observed), state_json=w.state
            )
            for w in c.workers.values()
        ],
    )
