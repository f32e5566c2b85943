"""What a cluster message says it reserves: its scheduler plus its requested workers, and
nothing once it has ended."""

from __future__ import annotations

import json

from flotilla_registry.convert import cluster_message
from flotilla_registry.model import ClusterRecord, Observed, Target

GiB = 2**30
CONFIG = json.dumps(
    {"scheduler_cores": 1, "scheduler_memory": GiB, "worker_cores": 2, "worker_memory": 4 * GiB}
)


def record(**kw: object) -> ClusterRecord:
    base: dict[str, object] = dict(
        name="c1", owner="alice", backend="local", options="{}", config=CONFIG, token="t",
        tls_cert="", tls_key="", observed=Observed.RUNNING, count=3,
    )  # fmt: skip
    base.update(kw)
    return ClusterRecord(**base)  # type: ignore[arg-type]


def test_an_active_cluster_reports_scheduler_plus_requested_workers() -> None:
    msg = cluster_message(record())
    assert (msg.cores, msg.memory_bytes) == (1 + 3 * 2, GiB + 3 * 4 * GiB)
    pending = cluster_message(record(observed=Observed.STARTING, count=0))
    assert (pending.cores, pending.memory_bytes) == (1, GiB)


def test_an_ended_cluster_reserves_nothing() -> None:
    msg = cluster_message(record(target=Target.STOPPED, observed=Observed.STOPPED))
    assert (msg.cores, msg.memory_bytes) == (0, 0)
