"""Exceptions and warnings raised by the Flotilla client.

Kept free of heavy imports so ``flotilla.GatewayError`` & co. are cheap to reach.
"""

from __future__ import annotations

__all__ = [
    "GatewayAuthError",
    "GatewayClusterError",
    "GatewayError",
    "GatewayLimitError",
    "GatewayPermissionError",
    "GatewayServerError",
    "GatewayWarning",
]


class GatewayError(Exception):
    """Base class of the errors the gateway reports."""


class GatewayClusterError(GatewayError):
    """A cluster could not be started, stopped or scaled (e.g. it is not running)."""


class GatewayServerError(GatewayError):
    """The gateway failed internally or could not be reached."""


class GatewayAuthError(GatewayError):
    """The gateway rejected (or could not check) the client's credentials."""


class GatewayPermissionError(GatewayError, PermissionError):
    """The authenticated user may not act on this cluster."""


class GatewayLimitError(GatewayError, ValueError):
    """A limit forbids the request (e.g. too many clusters); a ``ValueError``, like
    dask-gateway's 422 for requests over a cluster limit."""


class GatewayWarning(UserWarning):
    """Warnings raised by the gateway client (e.g. a scale request was clamped)."""
