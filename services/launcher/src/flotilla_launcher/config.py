"""The launcher's own configuration section, ``c.Launcher``."""

from __future__ import annotations

from traitlets import Float, Integer, Unicode
from traitlets.config import Configurable

__all__ = ["Launcher"]


class Launcher(Configurable):
    """How the launcher talks to the registry and paces its reconcile loops."""

    parallelism = Integer(20, help="How many clusters are reconciled concurrently.", config=True)
    status_check_period = Float(
        1.0,
        help=(
            "Seconds between batched status checks of every running scheduler and worker "
            "(how quickly an exited process is reported)."
        ),
        config=True,
    )
    rpc_timeout = Float(
        10.0, help="Deadline in seconds of each unary call to the registry.", config=True
    )
    backoff_base = Float(
        0.1, help="First retry delay in seconds after a failed reconcile.", config=True
    )
    backoff_max = Float(
        300.0, help="Longest retry delay in seconds after repeated failed reconciles.", config=True
    )
    watch_backoff_max = Float(
        10.0,
        help="Longest delay in seconds between attempts to re-open the registry watch.",
        config=True,
    )
    shutdown_grace = Float(
        15.0,
        help=(
            "Seconds a stopping launcher lets in-flight reconciles finish (so nothing it "
            "started goes unreported). Clusters themselves are never stopped on shutdown."
        ),
        config=True,
    )
    log_tail_bytes = Integer(
        256 * 1024,
        min=1024,
        max=1024 * 1024,
        help=(
            "Bytes kept of the end of each scheduler's and worker's output when a "
            "cluster's logs are sent to the registry (when it stops, or on request)."
        ),
        config=True,
    )
    log_total_bytes = Integer(
        4 * 1024 * 1024,
        min=1024,
        help=(
            "Bytes of logs sent per cluster at most: the scheduler's, then its workers' "
            "most recently active first, until this many."
        ),
        config=True,
    )
    health_address = Unicode(
        "",
        help="host:port for a gRPC health service (grpc.health.v1); empty: none.",
        config=True,
    )
