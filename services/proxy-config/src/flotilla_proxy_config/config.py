"""``c.ProxyConfig``: how proxy-config shapes Envoy's configuration.

Addresses shared with other services (public listener, registry, auth, xDS, admin port)
come from ``flotilla_common.config.Deployment``; this section holds only what is
specific to Envoy and the xDS server.
"""

from __future__ import annotations

from traitlets import Bool, Float, Integer, TraitError, Unicode, validate
from traitlets.config import Configurable

__all__ = ["ProxyConfig"]


class ProxyConfig(Configurable):
    """Envoy settings and the behaviour of proxy-config's xDS server."""

    envoy_path = Unicode(
        "envoy",
        help=(
            "Path of the Envoy binary (or a name looked up on PATH). Used by whoever "
            "starts Envoy, e.g. the embedded runner."
        ),
        config=True,
    )
    node_id = Unicode("flotilla-envoy", help="Envoy node id sent to the xDS server.", config=True)
    node_cluster = Unicode(
        "flotilla", help="Envoy node cluster sent to the xDS server.", config=True
    )
    drain_time = Float(
        30.0,
        help=(
            "Envoy --drain-time-s, in seconds: how long connections on a removed or "
            "changed listener (and on Envoy shutdown) may live on before being closed. "
            "The public listener never changes at runtime, so this matters at shutdown."
        ),
        config=True,
    )
    concurrency = Integer(
        2,
        help=(
            "Envoy --concurrency: worker threads. A connection lives on one thread; "
            "use 2 or more when many clients connect."
        ),
        config=True,
    )
    envoy_log_level = Unicode(
        "warning", help="Envoy -l: trace, debug, info, warning, error, critical, off.", config=True
    )
    tcp_idle_timeout = Float(
        3600.0,
        help=(
            "Idle timeout of scheduler TLS connections (tcp_proxy), in seconds. Must "
            "stay well above the dask client heartbeat (5 s): an idle close cancels the "
            "client's futures. At least 30; 0 disables the timeout."
        ),
        config=True,
    )
    connect_timeout = Float(
        5.0, help="Timeout for Envoy's connections to upstreams, in seconds.", config=True
    )
    api_timeout = Float(
        60.0,
        help=(
            "Route timeout of /api/ requests, in seconds. Must exceed the registry's "
            "long-poll (GET ?wait holds up to 20 s). At least 30."
        ),
        config=True,
    )
    auth_timeout = Float(
        5.0,
        help="How long Envoy waits for the auth service's ext_authz answer, in seconds.",
        config=True,
    )
    trim_stats = Bool(
        True,
        help=(
            "Do not keep Envoy statistics for per-cluster upstreams (sni_*, dash_*). "
            "Per-cluster stats dominate Envoy's memory and start-up time with many "
            "clusters; disable to debug a single cluster through the admin interface."
        ),
        config=True,
    )
    max_downstream_connections = Integer(
        50_000,
        help="Overload manager limit of Envoy's active downstream connections, all listeners.",
        config=True,
    )
    initial_routes_wait = Float(
        2.0,
        help=(
            "On start, how long to wait for the registry's full route set before serving "
            "Envoy the static part of the configuration (API, auth), in seconds."
        ),
        config=True,
    )
    watch_backoff_max = Float(
        10.0,
        help="Upper bound of the backoff between reconnects to the registry, in seconds.",
        config=True,
    )

    @validate("tcp_idle_timeout")
    def _validate_idle(self, proposal: dict[str, float]) -> float:
        value = proposal["value"]
        if value != 0 and value < 30:
            raise TraitError(f"tcp_idle_timeout must be 0 or at least 30 seconds, got {value}")
        return value

    @validate("api_timeout")
    def _validate_api_timeout(self, proposal: dict[str, float]) -> float:
        value = proposal["value"]
        if value < 30:
            raise TraitError(f"api_timeout must be at least 30 seconds, got {value}")
        return value

    @validate("concurrency")
    def _validate_concurrency(self, proposal: dict[str, int]) -> int:
        value = proposal["value"]
        if value < 1:
            raise TraitError(f"concurrency must be at least 1, got {value}")
        return value
