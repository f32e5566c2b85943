"""Wiring: store, domain service, gRPC servers and the REST facade."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
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
from flotilla_common.metrics import MetricsServer, serve_metrics
from flotilla_common.sessions import session_cookies
from traitlets import TraitError
from traitlets.config import Config

from .backends import BackendChoice
from .clusterconfig import config_class_for, resolve_cluster_config
from .clusters import ClusterService, ServiceSettings
from .config import KEYS_ENV, Registry
from .crypto import FieldCipher, KeyConfigError, generate_key
from .lifecycle import Housekeeping
from .metrics import RegistryMetrics
from .options import Options, OptionsError
from .quotas import Quotas
from .rest import make_app
from .scheduler_api import SchedulerAPI
from .servicer import (
    ClusterTokenServicer,
    ControlServicer,
    LauncherServicer,
    RegistryServicer,
    RouteServicer,
)
from .store import Store, StoreSetupError, is_persistent, open_store
from .web import add_web_routes

__all__ = ["RegistryApp", "StartupError", "main", "make_store"]

log = logging.getLogger(__name__)

_INTERNAL = (
    "/flotilla.registry.v1.LauncherService/",
    "/flotilla.registry.v1.RouteService/",
    "/flotilla.registry.v1.ClusterTokenService/",
    "/flotilla.registry.v1.ControlService/",
)


class StartupError(RuntimeError):
    """The registry cannot start as configured: one line for the operator."""


def make_store(registry: Registry, url: str) -> Store:
    """The store for ``url``, encrypting with the configured keys.

    Refuses a persistent store without keys: tokens and TLS keys must not sit in a
    database file or server in plaintext.
    """
    keys = registry.encryption_keys()
    if not keys and is_persistent(url):
        raise StartupError(
            "refusing to keep cluster tokens and TLS keys unencrypted: set "
            f"c.Registry.db_encrypt_keys (or ${KEYS_ENV}); `flotilla-registry generate-key` "
            "prints a new key"
        )
    try:
        cipher = FieldCipher(keys) if keys else None
        return open_store(url, cipher, pool_size=registry.db_pool_size)
    except KeyConfigError as exc:
        raise StartupError(f"c.Registry.db_encrypt_keys: {exc}") from None
    except StoreSetupError as exc:
        raise StartupError(f"c.Registry.db_url: {exc}") from None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


@dataclass
class RegistryApp:
    config: Config
    grpc_port: int = 0
    http_port: int = 0
    metrics_server: MetricsServer | None = None

    async def start(self) -> None:
        deployment = Deployment(config=self.config)
        registry = Registry(config=self.config)
        # Checked before anything is opened: a mapping to a backend not offered is fatal.
        try:
            backends = BackendChoice(
                backends=tuple(registry.backends),
                default_backend=registry.default_backend,
                by_user=dict(registry.backend_by_user),
                by_group=dict(registry.backend_by_group),
                option=registry.backend_option,
            )
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        # A bad c.ClusterConfig value is the operator's to fix before anyone asks for a
        # cluster, not a failed request for every user.
        for backend in backends.backends:
            try:
                resolve_cluster_config(self.config, {}, config_class=config_class_for(backend))
            except (TraitError, OptionsError) as exc:
                raise StartupError(
                    f"cluster configuration for backend {backend!r}: {exc}"
                ) from None
        try:
            quotas = Quotas(config=self.config)
            quotas.for_user("", ())  # checks the default
        except TraitError as exc:
            raise StartupError(f"c.Quotas: {exc}") from None
        url = registry.db_url or f"sqlite:///{deployment.state_path / 'registry.sqlite'}"
        self.store = make_store(registry, url)
        try:
            await self.store.open()
        except StoreSetupError as exc:
            raise StartupError(str(exc)) from None
        self.scheduler_api = SchedulerAPI()
        settings = ServiceSettings(
            options=registry.cluster_options if registry.cluster_options is not None else Options(),
            cluster_config=self.config,
            api_url=deployment.resolved_api_url,
            backends=backends,
            logs_request_timeout=registry.logs_request_timeout,
            check_addresses=registry.check_scheduler_addresses,
            check_timeout=registry.scheduler_check_timeout,
            quotas=quotas,
        )
        self.service = ClusterService(self.store, settings, self.scheduler_api)
        self.metrics = RegistryMetrics(self.service)
        await self.service.start()
        from .pgstore import PostgresStore

        if isinstance(self.store, PostgresStore):
            from .replication import PostgresReplica

            self.service.replica = PostgresReplica(
                self.service, self.store, resync_period=registry.db_resync_seconds
            )
        await self.service.replica.start()
        self.housekeeping = Housekeeping(
            self.service.check_timeouts,
            self.store.purge_finished,
            check_period=registry.check_timeouts_period,
            cleanup_period=registry.db_cleanup_period,
            max_age=registry.db_cluster_max_age,
            leads=lambda: self.service.replica.leads,
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
        http_app = make_app(self.service, identity_key, session_cookies(self.config))
        add_web_routes(http_app)
        self.runner = web.AppRunner(http_app, access_log=None)
        await self.runner.setup()
        host, port = _split(deployment.registry_http_address)
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.metrics_server = serve_metrics(deployment, "registry", self.metrics.registry)
        log.info(
            "registry serving gRPC on %s and REST on %s:%d (store %s)",
            deployment.registry_grpc_address,
            host,
            self.http_port,
            self.store,
        )

    async def stop(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self.housekeeping.stop()
        await self.grpc_server.stop(grace=2)
        await self.runner.cleanup()
        await self.service.replica.stop()
        await self.scheduler_api.close()
        await self.store.close()


async def _amain(config: Config) -> None:
    app = RegistryApp(config)
    await app.start()
    await run_until_signalled(app.stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flotilla-registry", description=__doc__)
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command", metavar="{serve,generate-key}")
    add_config_argument(commands.add_parser("serve", help="run the registry (the default)"))
    commands.add_parser(
        "generate-key", help="print a new key for c.Registry.db_encrypt_keys and exit"
    )
    args = parser.parse_args(argv)
    if args.command == "generate-key":
        print(generate_key())
        return
    setup_logging("registry")
    try:
        asyncio.run(_amain(load_config(args.config)))
    except StartupError as exc:
        sys.exit(f"flotilla-registry: {exc}")
