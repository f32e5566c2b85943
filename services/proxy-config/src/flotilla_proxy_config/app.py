"""proxy-config's process: the delta ADS server plus the registry route watch.

``flotilla-proxy-config [serve]`` runs the server until SIGTERM/SIGINT;
``flotilla-proxy-config bootstrap --out FILE`` writes Envoy's bootstrap. The embedded
runner uses ``ProxyConfigService`` (start/stop in its own event loop) and
``flotilla_proxy_config.bootstrap.bootstrap_config``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import NoReturn

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from flotilla_common.config import Deployment, add_config_argument, load_config
from flotilla_common.grpcserver import run_until_signalled, start_server
from flotilla_common.logs import setup_logging
from flotilla_common.metrics import MetricsServer, serve_metrics
from flotilla_common.sessions import cookie_name
from traitlets.config import Config

from .bootstrap import bootstrap_config, envoy_command, write_bootstrap
from .config import ProxyConfig
from .metrics import XdsMetrics
from .snapshot import SnapshotBuilder
from .watcher import RouteWatcher
from .xds import ADS_SERVICE_NAME, AggregatedDiscoveryServicer, SnapshotStore

__all__ = ["ProxyConfigService", "main", "serve"]

log = logging.getLogger(__name__)


class ProxyConfigService:
    """The xDS server and its route watch, owned together.

    ``xds_address`` overrides ``Deployment.xds_address`` (``127.0.0.1:0`` picks a free
    port; ``start`` returns it).
    """

    def __init__(self, config: Config | None = None, *, xds_address: str | None = None) -> None:
        cfg = config if config is not None else Config()
        self.deployment = Deployment(config=cfg)
        self.proxy_config = ProxyConfig(config=cfg)
        self.store = SnapshotStore()
        self.builder = SnapshotBuilder(self.deployment, self.proxy_config, cookie_name(cfg))
        self.watcher = RouteWatcher(self.deployment, self.proxy_config, self.builder, self.store)
        self._address = xds_address or self.deployment.xds_address
        self._server: grpc.aio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self.metrics = XdsMetrics()
        self.metrics_server: MetricsServer | None = None
        self.port = 0

    async def start(self) -> int:
        """Start serving and watching; returns the xDS port."""
        servicer = AggregatedDiscoveryServicer(self.store, self.metrics)
        self._server, self.port = await start_server(
            self._address,
            lambda server: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
                servicer, server
            ),
            service_names=[ADS_SERVICE_NAME],
        )
        self._watch = asyncio.create_task(self.watcher.run(), name="route-watch")
        self.metrics_server = serve_metrics(self.deployment, "proxy-config", self.metrics.registry)
        log.info(
            "xDS server on %s (port %d), routes from registry %s",
            self._address,
            self.port,
            self.deployment.registry_grpc_address,
        )
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        """Stop watching, end the xDS streams (Envoy keeps its config) and stop serving."""
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        self.store.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


async def serve(config: Config) -> None:
    """Run proxy-config until SIGTERM/SIGINT."""
    service = ProxyConfigService(config)
    await service.start()
    await run_until_signalled(service.stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flotilla-proxy-config", description="Flotilla's delta xDS server for Envoy."
    )
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", help="run the xDS server (default)")
    boot_cmd = commands.add_parser("bootstrap", help="write Envoy's bootstrap configuration")
    envoy_cmd = commands.add_parser(
        "envoy", help="write the bootstrap into the state directory and exec Envoy with it"
    )
    for sub in (serve_cmd, boot_cmd, envoy_cmd):
        # SUPPRESS: a --config given before the subcommand is not overwritten.
        sub.add_argument(
            "--config", "-f", default=argparse.SUPPRESS, help="Flotilla configuration file"
        )
    boot_cmd.add_argument(
        "--out", required=True, help="file to write (.json, or .yaml/.yml); '-' for stdout"
    )
    return parser


def _exec_envoy(config: Config) -> NoReturn:
    """Replace this process with Envoy, so whoever started us holds Envoy's PID."""
    proxy_config = ProxyConfig(config=config)
    state = Deployment(config=config).state_path
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state / "envoy-bootstrap.json"
    write_bootstrap(bootstrap_config(config), path)
    binary = proxy_config.envoy_path
    if binary == "envoy" and os.environ.get("FLOTILLA_ENVOY"):
        binary = os.environ["FLOTILLA_ENVOY"]
    if shutil.which(binary) is None:
        raise SystemExit(
            f"Envoy binary {binary!r} not found: set c.ProxyConfig.envoy_path or FLOTILLA_ENVOY "
            "(`make run` installs it)"
        )
    command = envoy_command(proxy_config, path, envoy_path=binary)
    os.execv(shutil.which(binary) or binary, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    if args.command == "bootstrap":
        bootstrap = bootstrap_config(config)
        if args.out == "-":
            json.dump(bootstrap, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            write_bootstrap(bootstrap, args.out)
        return 0
    if args.command == "envoy":
        _exec_envoy(config)
    setup_logging("proxy-config")
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
