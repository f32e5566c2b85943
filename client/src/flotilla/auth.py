"""How the client proves who it is to a Flotilla gateway.

Credentials travel as gRPC metadata on every call until the gateway hands out a
session cookie (``set-cookie``), which the client then sends instead.
"""

from __future__ import annotations

import base64
import getpass
import importlib
import os
from typing import Any

import dask.config

from .utils import format_template

__all__ = ["BasicAuth", "GatewayAuth", "JupyterHubAuth", "get_auth"]


class GatewayAuth:
    """Base class for authentication methods.

    Subclasses override :meth:`metadata` to return the gRPC metadata (lower-case keys)
    that carries their credentials, and may override :meth:`post_response` to look at
    what the gateway sent back.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}"
            )

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata entries to send with a call.

        Returns
        -------
        metadata : list of (str, str)
        """
        return []

    def post_response(self, metadata: list[tuple[str, str]]) -> None:
        """Called with the response metadata of each successful call.

        Parameters
        ----------
        metadata : list of (str, str)
            Initial and trailing metadata of the response.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BasicAuth(GatewayAuth):
    """HTTP Basic authentication.

    Parameters
    ----------
    username : str, optional
        Defaults to the current user (``getpass.getuser()``).
    password : str, optional
        Defaults to the empty string (for gateways that check no password).
    """

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        super().__init__()
        self.username = username if username is not None else getpass.getuser()
        self.password = password if password is not None else ""

    def header(self) -> str:
        """The ``Authorization`` header value: ``Basic base64(user:password)``.

        Returns
        -------
        value : str
        """
        raw = f"{self.username}:{self.password}".encode("latin-1")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", self.header())]

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r})"


class JupyterHubAuth(GatewayAuth):
    """A JupyterHub API token, for a gateway that logs users in with their hub.

    Parameters
    ----------
    api_token : str, optional
        Defaults to ``$JUPYTERHUB_API_TOKEN``, the token a notebook server started by the
        hub has.
    """

    def __init__(self, api_token: str | None = None) -> None:
        super().__init__()
        token = api_token if api_token is not None else os.environ.get("JUPYTERHUB_API_TOKEN")
        if not token:
            raise ValueError(
                "JupyterHub authentication needs a token: pass api_token or set "
                "JUPYTERHUB_API_TOKEN (a notebook server started by the hub has it)"
            )
        self.api_token = token

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"jupyterhub {self.api_token}")]


_auth_types: dict[str, type[GatewayAuth]] = {"basic": BasicAuth, "jupyterhub": JupyterHubAuth}


def _import_object(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(
            f"Unknown auth type {path!r}: expected one of {sorted(_auth_types)} "
            "or the dotted import path of a GatewayAuth subclass"
        )
    return getattr(importlib.import_module(module), name)


def get_auth(auth: str | GatewayAuth | type[GatewayAuth] | None = None) -> GatewayAuth:
    """Resolve an authentication method.

    Parameters
    ----------
    auth : str, GatewayAuth or GatewayAuth subclass, optional
        An instance is returned as is. A name (``"basic"``), a dotted import path or a
        class is instantiated with the keyword arguments from dask config
        ``gateway.auth.kwargs`` (template-formatted). Defaults to dask config
        ``gateway.auth.type``.

    Returns
    -------
    auth : GatewayAuth
    """
    if auth is None:
        auth = dask.config.get("gateway.auth.type", "basic")
    if isinstance(auth, GatewayAuth):
        return auth
    if isinstance(auth, str):
        cls = _auth_types.get(auth.lower()) or _import_object(auth)
    else:
        cls = auth
    if not (isinstance(cls, type) and issubclass(cls, GatewayAuth)):
        raise TypeError(f"auth must be a GatewayAuth instance or subclass, got {auth!r}")
    kwargs = dask.config.get("gateway.auth.kwargs", None) or {}
    return cls(**{k: format_template(v) for k, v in kwargs.items()})
