"""A launcher's Prometheus metrics (flotilla_common.metrics serves them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flotilla_common.metrics import LATENCY_BUCKETS, new_registry
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["LauncherMetrics"]


class _Tracked(Collector):
    def __init__(self, backend: str, count: Callable[[], int]) -> None:
        self.backend = backend
        self.count = count

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "flotilla_launcher_clusters",
            "Clusters this launcher is driving (unfinished, assigned to its backend).",
            labels=["backend"],
        )
        family.add_metric([self.backend], self.count())
        yield family


class LauncherMetrics:
    """How long the backend takes to start schedulers and workers and to check them."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.registry = new_registry()
        self.start_seconds = Histogram(
            "flotilla_launcher_start_seconds",
            "Seconds the backend took to start (submit) a scheduler or a worker, by "
            "backend and what (cluster or worker); not counting the scheduler's own start.",
            ["backend", "what"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.check_seconds = Histogram(
            "flotilla_launcher_check_seconds",
            "Seconds each periodic status check of all the launcher's clusters took.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def track(self, count: Callable[[], int]) -> None:
        """Report ``count()`` clusters as driven, read when scraped."""
        self.registry.register(_Tracked(self.backend, count))

    def started(self, what: str, seconds: float) -> None:
        self.start_seconds.labels(self.backend, what).observe(seconds)

    def checked(self, seconds: float) -> None:
        self.check_seconds.labels(self.backend).observe(seconds)
