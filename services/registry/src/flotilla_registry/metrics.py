"""The registry's Prometheus metrics (flotilla_common.metrics serves them).

What the registry knows best: its unfinished clusters by status and backend and what
each user's reserve (read when scraped, from the registry's own view of its active
clusters), and, as they happen, how long clusters took to start, how they ended, and the
schedulers' heartbeats.
"""

from __future__ import annotations

from collections.abc import Iterator

from flotilla_common.metrics import LATENCY_BUCKETS, new_registry
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .clusters import ClusterObserver, ClusterService
from .model import ClusterRecord, Status

__all__ = ["RegistryMetrics"]

#: The statuses of unfinished clusters, reported (as 0) even when no cluster has them.
_ACTIVE_STATUSES = (Status.PENDING, Status.RUNNING, Status.STOPPING)


class _Clusters(Collector):
    """Gauges read at scrape time from the registry's active clusters."""

    def __init__(self, clusters: ClusterService, backends: list[str]) -> None:
        self.clusters = clusters
        self.backends = backends

    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "flotilla_clusters",
            "Unfinished clusters, by status and backend.",
            labels=["status", "backend"],
        )
        counts = {(s.name, b): 0 for s in _ACTIVE_STATUSES for b in self.backends}
        for c in self.clusters.active_snapshot():
            key = (c.status.name, c.backend)
            counts[key] = counts.get(key, 0) + 1
        for (status, backend), n in sorted(counts.items()):
            by_status.add_metric([status, backend], n)
        yield by_status
        families = {
            "clusters": GaugeMetricFamily(
                "flotilla_user_clusters", "Active clusters, per user.", labels=["user"]
            ),
            "cores": GaugeMetricFamily(
                "flotilla_user_cores",
                "Cores reserved by active clusters (schedulers and granted workers), per user.",
                labels=["user"],
            ),
            "memory": GaugeMetricFamily(
                "flotilla_user_memory_bytes",
                "Memory reserved by active clusters, per user.",
                labels=["user"],
            ),
            "workers": GaugeMetricFamily(
                "flotilla_user_workers",
                "Workers granted to active clusters, per user.",
                labels=["user"],
            ),
        }
        for user, used in sorted(self.clusters.reserved_by_owner().items()):
            families["clusters"].add_metric([user], used.clusters)
            families["cores"].add_metric([user], used.cores)
            families["memory"].add_metric([user], used.memory)
            families["workers"].add_metric([user], used.workers)
        yield from families.values()


class RegistryMetrics(ClusterObserver):
    """The registry's metrics; observes ``clusters`` (it sets itself as their observer)."""

    def __init__(self, clusters: ClusterService) -> None:
        self.registry = new_registry()
        self.start_seconds = Histogram(
            "flotilla_cluster_start_seconds",
            "Seconds from a cluster's creation to its scheduler's first heartbeat (RUNNING).",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "flotilla_clusters_finished",
            "Clusters that ended, by backend and how (STOPPED or FAILED).",
            ["backend", "status"],
            registry=self.registry,
        )
        self.heartbeat_interval = Histogram(
            "flotilla_heartbeat_interval_seconds",
            "Seconds between a scheduler's heartbeats as received: the period plus the lag.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "flotilla_scheduler_loop_lag_seconds",
            "How far behind its event loop a scheduler reported itself, per heartbeat.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        backends = list(clusters.settings.backends.backends)
        self.registry.register(_Clusters(clusters, backends))
        clusters.observer = self

    def started(self, c: ClusterRecord, seconds: float) -> None:
        self.start_seconds.labels(c.backend).observe(seconds)

    def finished_cluster(self, c: ClusterRecord) -> None:
        self.finished.labels(c.backend, c.status.name).inc()

    def heartbeat(self, c: ClusterRecord, interval: float | None, lag: float) -> None:
        if interval is not None:
            self.heartbeat_interval.observe(interval)
        self.loop_lag.observe(lag)
