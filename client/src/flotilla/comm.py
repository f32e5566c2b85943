# distributed is untyped.
# mypy: disable-error-code="no-untyped-call"
"""The ``gateway://`` distributed comm: TLS to a scheduler through the gateway's proxy.

An address ``gateway://host:port/<cluster-name>`` opens a TCP connection to
``host:port`` and starts TLS with SNI ``daskgateway-<cluster-name>``; the proxy routes
the still-encrypted stream to that cluster's scheduler by the SNI. After the handshake
it is an ordinary distributed TLS comm.

This is the same backend name and behaviour as ``dask_gateway.comm``; whichever of the
two packages is imported last registers its (equivalent) backend.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from distributed.comm.core import CommClosedError, Connector, FatalCommClosedError
from distributed.comm.registry import Backend, backends
from distributed.comm.tcp import (
    MAX_BUFFER_SIZE,
    TLS,
    TCPConnector,
    convert_stream_closed_error,
    get_stream_address,
)
from distributed.utils import ensure_ip, get_ip
from tornado.iostream import StreamClosedError

__all__ = ["SNI_PREFIX", "GatewayBackend", "GatewayConnector", "parse_gateway_address"]

#: Prefix of the TLS server name that routes a connection to a cluster.
SNI_PREFIX = "daskgateway-"


def parse_gateway_address(address: str) -> tuple[str, int, str]:
    """Split ``[gateway://]host:port/<name>`` into ``(host, port, name)``.

    Parameters
    ----------
    address : str
        With or without the ``gateway://`` scheme.

    Returns
    -------
    host, port, name : str, int, str
    """
    if not address.startswith("gateway://"):
        address = "gateway://" + address
    parsed = urlsplit(address)
    name = parsed.path.strip("/")
    if not name:
        raise ValueError(f"Gateway address {address!r} missing path component")
    if parsed.hostname is None or parsed.port is None:
        raise ValueError(f"Gateway address {address!r} needs a host and a port")
    return parsed.hostname, parsed.port, name


def _unparse(host: str, port: int, name: str) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}/{name}"


class GatewayConnector(Connector):
    """Connects to ``host:port/<name>`` with TLS and SNI ``daskgateway-<name>``."""

    # The TCP client (and its non-blocking resolver) distributed's own TCP comms use.
    client = TCPConnector.client

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> TLS:
        host, port, name = parse_gateway_address(address)
        ctx = connection_args.get("ssl_context")
        if not isinstance(ctx, ssl.SSLContext):
            raise TypeError(
                "Gateway expects a `ssl_context` argument of type "
                f"ssl.SSLContext, instead got {ctx}"
            )
        try:
            plain = await self.client.connect(host, port, max_buffer_size=int(MAX_BUFFER_SIZE))
            if plain.closed():
                # Closed before the handshake (seen while a restarted Envoy comes up):
                # a comm error, which distributed retries; start_tls would raise a
                # ValueError that ends the client's reconnection for good.
                raise StreamClosedError(plain.error)
            stream = await plain.start_tls(
                False, ssl_options=ctx, server_hostname=SNI_PREFIX + name
            )
            if stream.closed() and stream.error:
                raise StreamClosedError(stream.error)
        except StreamClosedError as e:
            convert_stream_closed_error(self, e)
        except ssl.SSLCertVerificationError as e:
            raise FatalCommClosedError(
                f"TLS certificate of cluster {name!r} does not verify: {e}"
            ) from e
        except ssl.SSLError as e:
            raise CommClosedError(f"in {self}: TLS handshake with {address!r} failed: {e}") from e

        local_address = "tls://" + get_stream_address(stream)
        peer_address = "gateway://" + address
        return TLS(stream, local_address, peer_address, deserialize)


class GatewayBackend(Backend):
    """The ``gateway`` comm backend (connect only)."""

    def get_connector(self) -> GatewayConnector:
        return GatewayConnector()

    def get_listener(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Listening on a gateway connection")

    def get_address_host(self, loc: str) -> str:
        return parse_gateway_address(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, port, _ = parse_gateway_address(loc)
        return host, port

    def resolve_address(self, loc: str) -> str:
        host, port, name = parse_gateway_address(loc)
        return _unparse(ensure_ip(host), port, name)

    def get_local_address_for(self, loc: str) -> str:
        host, port, name = parse_gateway_address(loc)
        return _unparse(get_ip(ensure_ip(host)), port, name)


def register() -> None:
    """Register the ``gateway`` backend with distributed (idempotent)."""
    backends["gateway"] = GatewayBackend()


register()
