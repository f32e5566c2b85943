"""Wiring: store, domain service, gRPC servers and the REST facade."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

import grpc
from aiohttp import web
from flotilla.registry.v1 import internal_pb2_grpc, registry_pb2_grpc
from flotilla_common.config import Deployment, add_config_argument, load_config
from flotilla_common.grpcserver import (
    InternalTokenInterceptor,
    run_until_signalled,
    start_server,
)
from flotilla_common.logs import setup_logging
from traitlets.config import Config

from .clusters import ClusterService, ServiceSettings
from .config import Registry
from .lifecycle import Housekeeping
from .options import Options
from .rest import make_app
from .scheduler_api import SchedulerAPI
from .servicer import (
    ClusterTokenServicer,
    ControlServicer,
    LauncherServicer,
    RegistryServicer,
    RouteServicer,
)
from .store import open_store

__all__ = ["RegistryApp", "main"]

log = logging.getLogger(__name__)

_INTERNAL = (
    "/flotilla.registry.v1.LauncherService/",
    "/flotilla.registry.v1.RouteService/",
    "/flotilla.registry.v1.ClusterTokenService/",
    "/flotilla.registry.v1.ControlService/",
)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


@dataclass
class RegistryApp:
    config: Config
    grpc_port: int = 0
    http_port: int = 0

    async def start(self) -> None:
        deployment = Deployment(config=self.config)
        registry = Registry(config=self.config)
        url = registry.db_url or f"sqlite:///{deployment.state_path / 'registry.sqlite'}"
        self.store = open_store(url)
        await self.store.open()
        self.scheduler_api = SchedulerAPI()
        settings = ServiceSettings(
            options=registry.cluster_options if registry.cluster_options is not None else Options(),
            cluster_config=self.config,
            api_url=deployment.resolved_api_url,
            default_backend=registry.default_backend,
            backends=tuple(registry.backends),
            logs_request_timeout=registry.logs_request_timeout,
        )
        self.service = ClusterService(self.store, settings, self.scheduler_api)
        await self.service.start()
        self.housekeeping = Housekeeping(
            self.service.check_timeouts,
            self.store.purge_finished,
            check_period=registry.check_timeouts_period,
            cleanup_period=registry.db_cleanup_period,
            max_age=registry.db_cluster_max_age,
        )
        self.housekeeping.start()
        identity_key = deployment.secret("identity_key")
        internal_token = deployment.secret("internal_token")

        def register(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(
                RegistryServicer(self.service, identity_key), server
            )
            internal_pb2_grpc.add_LauncherServiceServicer_to_server(
                LauncherServicer(self.service, deployment.resolved_api_url), server
            )
            internal_pb2_grpc.add_RouteServiceServicer_to_server(
                RouteServicer(self.service), server
            )
            internal_pb2_grpc.add_ClusterTokenServiceServicer_to_server(
                ClusterTokenServicer(self.service), server
            )
            internal_pb2_grpc.add_ControlServiceServicer_to_server(
                ControlServicer(self.service), server
            )

        self.grpc_server, self.grpc_port = await start_server(
            deployment.registry_grpc_address,
            register,
            [
                "flotilla.registry.v1.RegistryService",
                "flotilla.registry.v1.LauncherService",
                "flotilla.registry.v1.RouteService",
                "flotilla.registry.v1.ClusterTokenService",
                "flotilla.registry.v1.ControlService",
            ],
            interceptors=[InternalTokenInterceptor(internal_token, _INTERNAL)],
        )
        self.runner = web.AppRunner(make_app(self.service, identity_key), access_log=None)
        await self.runner.setup()
        host, port = _split(deployment.registry_http_address)
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info(
            "registry serving gRPC on %s and REST on %s:%d (store %s)",
            deployment.registry_grpc_address,
            host,
            self.http_port,
            url.split("?")[0],
        )

    async def stop(self) -> None:
        await self.housekeeping.stop()
        await self.grpc_server.stop(grace=2)
        await self.runner.cleanup()
        await self.scheduler_api.close()
        await self.store.close()


async def _amain(config: Config) -> None:
    app = RegistryApp(config)
    await app.start()
    await run_until_signalled(app.stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flotilla-registry", description=__doc__)
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging("registry")
    asyncio.run(_amain(load_config(args.config)))
