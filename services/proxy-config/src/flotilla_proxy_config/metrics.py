"""proxy-config's Prometheus metrics (flotilla_common.metrics serves them)."""

from __future__ import annotations

from flotilla_common.metrics import LATENCY_BUCKETS, new_registry
from prometheus_client import Counter, Gauge, Histogram

__all__ = ["XdsMetrics"]


def _kind(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` → ``Cluster``."""
    return type_url.rsplit(".", 1)[-1]


class XdsMetrics:
    """How Envoy takes what proxy-config sends it."""

    def __init__(self) -> None:
        self.registry = new_registry()
        self.push_seconds = Histogram(
            "flotilla_xds_push_seconds",
            "Seconds from sending Envoy a change to its ACK, by resource type.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "flotilla_xds_rejected",
            "Responses Envoy rejected (NACK), by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "flotilla_xds_streams", "Envoys connected (open xDS streams).", registry=self.registry
        )

    def acked(self, type_url: str, seconds: float) -> None:
        self.push_seconds.labels(_kind(type_url)).observe(seconds)

    def nacked(self, type_url: str) -> None:
        self.rejected.labels(_kind(type_url)).inc()
