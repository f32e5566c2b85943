"""``flotilla-launcher``: run one backend's reconciler until SIGINT/SIGTERM.

The launcher is stateless: stopping it never stops clusters. A restarted launcher gets
every unfinished cluster from the registry and adopts the processes that still run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
from flotilla_common.config import Deployment, add_config_argument, load_config
from flotilla_common.grpcserver import run_until_signalled, start_server
from flotilla_common.logs import setup_logging
from flotilla_common.metrics import serve_metrics
from traitlets.config import Config

from .backends.base import load_backend
from .config import Launcher
from .reconciler import Reconciler

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


async def run(config: Config, backend_name: str) -> None:
    """Start the reconciler for ``backend_name`` and serve until signalled."""
    deployment = Deployment(config=config)
    settings = Launcher(config=config)
    backend = load_backend(backend_name)(config=config)
    reconciler = Reconciler(
        backend,
        backend_name,
        deployment.registry_grpc_address,
        deployment.secret("internal_token"),
        settings,
    )
    health: grpc.aio.Server | None = None
    if settings.health_address:
        health, port = await start_server(settings.health_address, lambda server: None, [])
        log.info("launcher %s: health service on port %s", backend_name, port)
    await reconciler.start()
    metrics = serve_metrics(deployment, f"launcher-{backend_name}", reconciler.metrics.registry)

    async def stop() -> None:
        if metrics is not None:
            metrics.close()
        await reconciler.stop()
        if health is not None:
            await health.stop(grace=1.0)

    await run_until_signalled(stop)


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``flotilla-launcher``."""
    parser = argparse.ArgumentParser(
        prog="flotilla-launcher",
        description="Start and stop Dask clusters for one backend, as the registry asks.",
    )
    parser.add_argument("--backend", default="local", help="backend name (entry point)")
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(f"launcher-{args.backend}")
    asyncio.run(run(load_config(args.config), args.backend))


if __name__ == "__main__":
    main()
