"""Registry errors: one gRPC code each, and the HTTP status the REST facade answers with."""

from __future__ import annotations

import grpc
from flotilla_common.errors import FlotillaError

__all__ = [
    "ClusterNotFound",
    "ClusterNotRunning",
    "InvalidRequest",
    "NotAuthenticated",
    "PermissionDenied",
    "QuotaExceeded",
    "RegistryError",
    "StoreUnavailable",
]


class RegistryError(FlotillaError):
    http_status = 500


class NotAuthenticated(RegistryError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ClusterNotFound(RegistryError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"Cluster {name} not found")


class PermissionDenied(RegistryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class InvalidRequest(RegistryError):
    """Bad options or arguments (dask-gateway answers these with 422)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422


class ClusterNotRunning(RegistryError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"cluster {name} is not running")


class QuotaExceeded(RegistryError):
    """A request would pass the owner's quota (409: dask-gateway's client shows the
    message of a 409, not of a 403 or 429)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 409


class StoreUnavailable(RegistryError):
    """The database cannot be reached right now; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503

    def __init__(self, log_message: str) -> None:
        super().__init__(
            "The registry's database is unavailable; try again shortly",
            log_message=log_message,
        )
