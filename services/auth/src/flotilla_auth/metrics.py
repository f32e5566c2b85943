"""The auth service's Prometheus metrics (flotilla_common.metrics serves them)."""

from __future__ import annotations

from flotilla_common.metrics import LATENCY_BUCKETS, new_registry
from prometheus_client import Counter, Histogram

from .checker import Decision

__all__ = ["AuthMetrics"]


class AuthMetrics:
    """Every decision Envoy asked for: its result, HTTP status and how long it took; and
    the clusters auth stopped for their owner's sake."""

    def __init__(self) -> None:
        self.registry = new_registry()
        self.decisions = Counter(
            "flotilla_auth_decisions",
            "Requests Envoy asked about, by result (allowed or denied) and HTTP status.",
            ["result", "code"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "flotilla_auth_check_seconds",
            "Seconds each decision took (a login costs its authenticator's exchange).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.owner_clusters_stopped = Counter(
            "flotilla_auth_owner_clusters_stopped",
            "Clusters auth stopped because the authenticator said their owner is gone "
            "(e.g. no JupyterHub notebook server for server_stopped_grace).",
            registry=self.registry,
        )

    def decided(self, decision: Decision, seconds: float) -> None:
        result = "allowed" if decision.allowed else "denied"
        self.decisions.labels(result, str(decision.status_code)).inc()
        self.seconds.observe(seconds)
