"""The Flotilla gateway client: dask-gateway's ``Gateway``/``GatewayCluster`` API over gRPC.

The client talks to the gateway's ``flotilla.registry.v1.RegistryService`` (served by
Envoy on the gateway's public port) and to each cluster's scheduler through the
``gateway://`` comm (TLS with SNI ``daskgateway-<name>`` on the proxy address).

The code lives in private modules (``_gateway``, ``_cluster``, ``_report``, ``_rpc``);
this module is where it is imported from.
"""

from __future__ import annotations

from ._cluster import ClusterObjectStatus, GatewayCluster
from ._gateway import CALL_TIMEOUT_SECONDS as CALL_TIMEOUT_SECONDS
from ._gateway import LOGS_WAIT_SECONDS as LOGS_WAIT_SECONDS
from ._gateway import WAIT_SECONDS as WAIT_SECONDS
from ._gateway import Gateway
from ._report import ClusterReport, ClusterStatus, Quota, UsageReport, WorkerReport
from ._rpc import map_rpc_error, resolve_addresses
from .errors import (
    GatewayAuthError,
    GatewayClusterError,
    GatewayError,
    GatewayLimitError,
    GatewayPermissionError,
    GatewayServerError,
    GatewayWarning,
)

__all__ = [
    "ClusterObjectStatus",
    "ClusterReport",
    "ClusterStatus",
    "Gateway",
    "GatewayAuthError",
    "GatewayCluster",
    "GatewayClusterError",
    "GatewayError",
    "GatewayLimitError",
    "GatewayPermissionError",
    "GatewayServerError",
    "GatewayWarning",
    "Quota",
    "UsageReport",
    "WorkerReport",
    "map_rpc_error",
    "resolve_addresses",
]
