"""Wiring of the auth service: configuration, registry channel, gRPC server, shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from flotilla_common.config import Deployment, add_config_argument, load_config
from flotilla_common.grpcserver import internal_channel, run_until_signalled, start_server
from flotilla_common.logs import setup_logging
from flotilla_common.metrics import MetricsServer, serve_metrics
from flotilla_common.sessions import SessionCookies
from traitlets.config import Config

from .authenticator import Authenticator, AuthenticatorConfigError, load_authenticator
from .checker import Checker
from .config import Auth
from .metrics import AuthMetrics
from .owners import OwnerWatch
from .servicer import SERVICE_NAME, AuthorizationServicer
from .tokens import CachingTokenVerifier, RegistryTokenVerifier

__all__ = ["AuthServer", "main", "start"]

log = logging.getLogger(__name__)

_GRACE_SECONDS = 5.0


class AuthServer:
    """A running auth service; ``stop()`` shuts it down."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        channel: grpc.aio.Channel,
        authenticator: Authenticator,
        checker: Checker,
        metrics_server: MetricsServer | None = None,
        owner_watch: OwnerWatch | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.checker = checker
        self.metrics_server = metrics_server
        self._channel = channel
        self._authenticator = authenticator
        self._owner_watch = owner_watch

    async def stop(self, grace: float = _GRACE_SECONDS) -> None:
        """Finish in-flight checks (up to ``grace`` seconds), then release everything."""
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self._owner_watch is not None:
            await self._owner_watch.stop()
        await self.server.stop(grace)
        await self._authenticator.close()
        await self._channel.close()
        log.info("auth stopped")


async def start(config: Config, address: str | None = None) -> AuthServer:
    """Start the auth service on ``address`` (default ``Deployment.auth_grpc_address``)."""
    deployment = Deployment(config=config)
    settings = Auth(config=config)
    authenticator = load_authenticator(settings.authenticator_class, config)
    channel = internal_channel(deployment.registry_grpc_address)
    verifier = CachingTokenVerifier(
        RegistryTokenVerifier(
            channel, deployment.secret("internal_token"), settings.registry_timeout_seconds
        ),
        settings.token_cache_seconds,
    )
    checker = Checker(
        authenticator=authenticator,
        token_verifier=verifier,
        cookies=SessionCookies(
            deployment.secret("cookie_key"),
            settings.cookie_name,
            authenticator.cookie_max_age_seconds or settings.cookie_max_age_seconds,
            settings.cookie_secure,
            settings.roles_refresh_seconds,
        ),
        identity_key=deployment.secret("identity_key"),
        admin_users=settings.admin_users,
        admin_groups=settings.admin_groups,
    )
    metrics = AuthMetrics()
    servicer = AuthorizationServicer(checker, metrics)

    def register(server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)

    listen = address or deployment.auth_grpc_address
    try:
        server, port = await start_server(listen, register, [SERVICE_NAME])
    except BaseException:
        await authenticator.close()
        await channel.close()
        raise
    log.info(
        "auth listening on %s (port %d), registry at %s",
        listen,
        port,
        deployment.registry_grpc_address,
    )
    metrics_server = serve_metrics(deployment, "auth", metrics.registry)
    owner_watch = None
    period = authenticator.owner_check_period_seconds
    if period is not None:
        owner_watch = OwnerWatch(
            authenticator,
            channel,
            deployment.secret("identity_key"),
            period,
            settings.registry_timeout_seconds,
            metrics,
        )
        owner_watch.start()
        log.info("checking the owners of active clusters every %g s", period)
    return AuthServer(server, port, channel, authenticator, checker, metrics_server, owner_watch)


async def serve(config: Config) -> None:
    """Run until SIGINT/SIGTERM."""
    auth = await start(config)
    await run_until_signalled(auth.stop)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``flotilla-auth``."""
    parser = argparse.ArgumentParser(
        prog="flotilla-auth", description="Flotilla auth service (Envoy ext_authz)."
    )
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging("auth")
    try:
        asyncio.run(serve(load_config(args.config)))
    except AuthenticatorConfigError as exc:
        raise SystemExit(f"flotilla-auth: {exc}") from None


if __name__ == "__main__":
    main()
