"""Reaching a gateway: its addresses, the gRPC target, failures as exceptions, cookies."""

from __future__ import annotations

from urllib.parse import urlsplit

import dask.config
import grpc
import grpc.aio

from . import config as _config  # registers the gateway.* dask config defaults
from .errors import (
    GatewayAuthError,
    GatewayClusterError,
    GatewayLimitError,
    GatewayPermissionError,
    GatewayServerError,
)
from .utils import format_template

del _config

__all__ = ["map_rpc_error", "resolve_addresses"]


def _host_for_netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolve_addresses(
    address: str | None = None,
    proxy_address: str | int | None = None,
    public_address: str | None = None,
) -> tuple[str, str, str]:
    """Work out the gateway, proxy and public addresses like dask-gateway does.

    Missing values come from dask config ``gateway.address``,
    ``gateway.proxy-address`` and ``gateway.public-address``; strings are
    template-formatted with ``os.environ``.

    Parameters
    ----------
    address : str, optional
        The gateway's address (``http(s)://host[:port][/prefix]``).
    proxy_address : str or int, optional
        Where schedulers are reached. An int is a port on ``address``'s host; a string
        is ``scheme://host:port`` or ``host:port``. Defaults to ``address``'s host and
        port (80 for http, 443 for https, 8786 otherwise).
    public_address : str, optional
        The base of dashboard links; defaults to ``address``.

    Returns
    -------
    address, proxy_address, public_address : str
        ``proxy_address`` is always ``gateway://host:port``.
    """
    if address is None:
        address = format_template(dask.config.get("gateway.address", None))
    if address is None:
        raise ValueError("No dask-gateway address provided or found in configuration")
    address = address.rstrip("/")

    if public_address is None:
        public_address = format_template(dask.config.get("gateway.public-address", None))
    public_address = address if public_address is None else public_address.rstrip("/")

    if proxy_address is None:
        proxy_address = format_template(dask.config.get("gateway.proxy-address", None))
    parsed = urlsplit(address)
    if proxy_address is None:
        port = parsed.port
        if port is None:
            port = {"http": 80, "https": 443}.get(parsed.scheme, 8786)
        proxy_netloc = f"{_host_for_netloc(parsed.hostname or '')}:{port}"
    elif isinstance(proxy_address, int) and not isinstance(proxy_address, bool):
        proxy_netloc = f"{_host_for_netloc(parsed.hostname or '')}:{proxy_address}"
    elif isinstance(proxy_address, str):
        proxy_netloc = urlsplit(proxy_address).netloc or proxy_address
    else:
        raise TypeError(f"proxy_address must be a str or int, got {proxy_address!r}")
    return address, f"gateway://{proxy_netloc}", public_address


def _grpc_target(address: str) -> tuple[str, bool]:
    """The gRPC target (``host:port``) for a gateway address, and whether it is TLS."""
    parsed = urlsplit(address)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"Gateway address {address!r} must start with http:// or https://")
    secure = parsed.scheme == "https"
    if not parsed.hostname:
        raise ValueError(f"Gateway address {address!r} has no host")
    port = parsed.port or (443 if secure else 80)
    return f"{_host_for_netloc(parsed.hostname)}:{port}", secure


def map_rpc_error(exc: grpc.aio.AioRpcError, address: str = "") -> Exception:
    """The exception a gRPC failure surfaces as (dask-gateway's, where it has one).

    Parameters
    ----------
    exc : grpc.RpcError
        The failed call.
    address : str, optional
        The gateway address, for messages about reaching it.

    Returns
    -------
    error : Exception
        ``ValueError`` (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE),
        :class:`GatewayLimitError` (RESOURCE_EXHAUSTED; a ``ValueError``),
        :class:`GatewayClusterError` (FAILED_PRECONDITION, ABORTED),
        :class:`GatewayPermissionError` (PERMISSION_DENIED),
        :class:`GatewayAuthError` (UNAUTHENTICATED), ``TimeoutError``
        (DEADLINE_EXCEEDED), else :class:`GatewayServerError`.
    """
    code = exc.code()
    details = exc.details() or ""
    msg = details or (code.name if code is not None else "unknown error")
    C = grpc.StatusCode
    if code in (C.INVALID_ARGUMENT, C.NOT_FOUND, C.OUT_OF_RANGE):
        return ValueError(msg)
    if code is C.RESOURCE_EXHAUSTED:
        return GatewayLimitError(msg)
    if code in (C.FAILED_PRECONDITION, C.ABORTED):
        return GatewayClusterError(msg)
    if code is C.PERMISSION_DENIED:
        return GatewayPermissionError(msg)
    if code is C.UNAUTHENTICATED:
        return GatewayAuthError(msg if details else "Authentication required")
    if code is C.DEADLINE_EXCEEDED:
        return TimeoutError("Request timed out")
    where = f" at {address}" if address else ""
    if code is C.UNAVAILABLE:
        return GatewayServerError(f"Gateway{where} unavailable: {msg}")
    if code is C.UNIMPLEMENTED:
        return GatewayServerError(
            f"Gateway{where} does not implement this call ({msg}); is it a Flotilla gateway?"
        )
    return GatewayServerError(msg)


def _parse_set_cookie(value: str) -> tuple[str, str, float | None] | None:
    """``(name, value, max_age)`` of a ``Set-Cookie`` header value (None if unusable)."""
    parts = [p.strip() for p in value.split(";")]
    name, sep, val = parts[0].partition("=")
    if not sep or not name.strip():
        return None
    max_age: float | None = None
    for attr in parts[1:]:
        key, _, arg = attr.partition("=")
        if key.strip().lower() == "max-age":
            try:
                max_age = float(arg.strip())
            except ValueError:
                pass
    return name.strip(), val.strip(), max_age
