"""Flotilla client: the dask-gateway client API for Flotilla gateways, and more.

Attributes are imported lazily: ``import flotilla`` (which every service does to reach
the generated ``flotilla.registry.v1`` protos) must not import dask or distributed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Generated protobuf code for ``flotilla.<svc>.v1`` is installed by another
# distribution (flotilla-protos) into this same package namespace.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

# public name -> submodule defining it
_EXPORTS: dict[str, str] = {
    "BasicAuth": "auth",
    "ClusterReport": "client",
    "ClusterStatus": "client",
    "Gateway": "client",
    "GatewayAuth": "auth",
    "GatewayAuthError": "errors",
    "GatewayCluster": "client",
    "GatewayClusterError": "errors",
    "GatewayError": "errors",
    "GatewayLimitError": "errors",
    "GatewayPermissionError": "errors",
    "GatewaySecurity": "security",
    "GatewayServerError": "errors",
    "GatewayWarning": "errors",
    "JupyterHubAuth": "auth",
    "Options": "options",
    "__version__": "_version",
    "get_auth": "auth",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from ._version import __version__ as __version__
    from .auth import BasicAuth as BasicAuth
    from .auth import GatewayAuth as GatewayAuth
    from .auth import JupyterHubAuth as JupyterHubAuth
    from .auth import get_auth as get_auth
    from .client import ClusterReport as ClusterReport
    from .client import ClusterStatus as ClusterStatus
    from .client import Gateway as Gateway
    from .client import GatewayCluster as GatewayCluster
    from .errors import GatewayAuthError as GatewayAuthError
    from .errors import GatewayClusterError as GatewayClusterError
    from .errors import GatewayError as GatewayError
    from .errors import GatewayLimitError as GatewayLimitError
    from .errors import GatewayPermissionError as GatewayPermissionError
    from .errors import GatewayServerError as GatewayServerError
    from .errors import GatewayWarning as GatewayWarning
    from .options import Options as Options
    from .security import GatewaySecurity as GatewaySecurity


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
