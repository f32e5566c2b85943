"""Prometheus metrics: every service has its own registry of them, served over HTTP on
the operators' address (``c.Deployment.metrics_host`` and ``metrics_ports``), never
through Envoy, so users cannot read them.

Names start with ``flotilla_``; each service's are defined next to what they measure.
The registry also holds the process's own (CPU, memory, open files).
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from .config import Deployment

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "new_registry", "serve_metrics"]

log = logging.getLogger(__name__)

#: Buckets (seconds) for latencies from milliseconds (an xDS push) to minutes (a cluster
#: queued in Slurm).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


def new_registry() -> CollectorRegistry:
    """An empty registry holding the process's own metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """A running /metrics endpoint (its HTTP server runs in a thread of its own)."""

    def __init__(self, server: WSGIServer, host: str) -> None:
        self._server = server
        self.host = host
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    deployment: Deployment, service: str, registry: CollectorRegistry
) -> MetricsServer | None:
    """Serve ``registry`` on ``service``'s port of ``c.Deployment.metrics_ports``; None
    where it has none. A port that is taken is logged, not fatal: a service is worth more
    than its metrics."""
    port = deployment.metrics_ports.get(service, 0)
    if not port:
        return None
    host = deployment.metrics_host
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error(
            "metrics not served: cannot listen on %s:%d (c.Deployment.metrics_ports[%r]): %s",
            host,
            port,
            service,
            exc.strerror or exc,
        )
        return None
    metrics = MetricsServer(server, host)
    log.info("metrics at %s", metrics.url)
    return metrics
