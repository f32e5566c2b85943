"""The command lines and gateway environment of schedulers and workers, for every backend.

What a scheduler or worker process runs (internals.md, "Launcher contract") does not
depend on where it runs: the local backend spawns these commands, the batch backends
put them in their job scripts.
"""

from __future__ import annotations

from .base import ClusterConfig, ClusterSpec

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "gateway_environment",
    "scheduler_command",
    "worker_command",
]

#: File names of a cluster's TLS certificate and key, in the directory a backend gives them.
CERT_FILE = "dask.crt"
KEY_FILE = "dask.pem"


def _fmt(value: float) -> str:
    return repr(float(value))


def scheduler_command(config: ClusterConfig, host: str = "127.0.0.1") -> list[str]:
    """The scheduler's command line (internals.md, "Launcher contract").

    ``host`` is the interface it listens on (batch jobs: ``0.0.0.0``, every interface of
    their node; the address it advertises is then the node's own).
    """
    return [
        *config.scheduler_cmd,
        "--protocol",
        "tls",
        "--port",
        "0",
        "--host",
        host,
        "--dashboard-address",
        f"{host}:0",
        "--preload",
        config.scheduler_preload,
        "--dg-api-address",
        f"{host}:0",
        "--dg-heartbeat-period",
        _fmt(config.heartbeat_period),
        "--dg-adaptive-period",
        _fmt(config.adaptive_period),
        "--dg-idle-timeout",
        _fmt(config.idle_timeout),
    ]


def worker_command(
    config: ClusterConfig,
    worker_name: str,
    scheduler_address: str,
    host: str = "127.0.0.1",
    *,
    dashboard: bool = True,
) -> list[str]:
    """A worker's command line; ``scheduler_address`` is ``host:port`` (or a full URL).

    ``host`` is the interface its dashboard listens on; ``dashboard=False``: none.
    """
    address = scheduler_address if "://" in scheduler_address else f"tls://{scheduler_address}"
    return [
        *config.worker_cmd,
        address,
        *(("--dashboard-address", f"{host}:0") if dashboard else ("--no-dashboard",)),
        "--name",
        worker_name,
        "--nthreads",
        str(config.worker_threads),
        "--memory-limit",
        str(config.worker_memory),
    ]


def gateway_environment(
    cluster: ClusterSpec, cert: str, key: str, worker_name: str | None
) -> dict[str, str]:
    """The variables every backend sets for a scheduler (``worker_name`` None) or worker.

    They come after the cluster configuration's ``environment``, which cannot override them.
    """
    role = "SCHEDULER" if worker_name is None else "WORKER"
    env = {
        "DASK_GATEWAY_API_URL": cluster.api_url,
        "DASK_GATEWAY_API_TOKEN": cluster.token,
        "DASK_GATEWAY_CLUSTER_NAME": cluster.name,
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
        f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT": cert,
        f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY": key,
    }
    if worker_name is not None:
        env["DASK_GATEWAY_WORKER_NAME"] = worker_name
    return env
