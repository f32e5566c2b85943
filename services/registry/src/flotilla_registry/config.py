"""Registry configuration (``c.Registry.*`` in the Flotilla config file)."""

from __future__ import annotations

from traitlets import Any, Float, List, Unicode
from traitlets.config import Configurable

__all__ = ["Registry"]


class Registry(Configurable):
    db_url = Unicode(
        "",
        help=(
            "Where records are kept: sqlite:///relative/path or sqlite:////absolute/path. "
            "Empty: sqlite in <state_dir>/registry.sqlite."
        ),
        config=True,
    )
    cluster_options = Any(
        None,
        allow_none=True,
        help=(
            "The options users may set when creating a cluster: a "
            "flotilla_registry.options.Options, or a callable (user) -> Options (sync or "
            "async) for options that depend on the user. None: no options."
        ),
        config=True,
    )
    backends = List(
        Unicode(),
        default_value=["local"],
        help="Backends this gateway offers; a launcher must run for each.",
        config=True,
    )
    default_backend = Unicode(
        "local",
        help=(
            "Backend of clusters whose options do not choose one (an options handler may "
            "return {'backend': name})."
        ),
        config=True,
    )
    check_timeouts_period = Float(
        1.0,
        min=0.05,
        help=(
            "Seconds between checks of every active cluster's start and heartbeat deadlines "
            "(the timeouts themselves are per cluster: c.ClusterConfig.cluster_start_timeout, "
            "heartbeat_timeout, worker_start_timeout, worker_start_failure_limit)."
        ),
        config=True,
    )
    db_cluster_max_age = Float(
        24 * 3600.0,
        min=0.0,
        help=(
            "Seconds a finished (STOPPED or FAILED) cluster's record, with its logs, is kept "
            "after it stopped; then it is deleted and the cluster is unknown (404). Active "
            "clusters are never deleted. 0: keep records forever."
        ),
        config=True,
    )
    db_cleanup_period = Float(
        600.0,
        min=0.05,
        help="Seconds between deletions of finished records older than db_cluster_max_age.",
        config=True,
    )
    logs_request_timeout = Float(
        5.0,
        min=0.0,
        help=(
            "Seconds a request for an active cluster's logs waits for its launcher to send "
            "the current output; then it answers with the logs collected before."
        ),
        config=True,
    )
