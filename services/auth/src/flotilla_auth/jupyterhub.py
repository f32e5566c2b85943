"""JupyterHub API tokens (``Authorization: jupyterhub <token>``).

The user's token is resolved by the hub itself: ``GET {api_url}/user`` with the token as
``Authorization: token <token>`` answers with the token owner's model (name, admin flag,
and groups when the token has ``read:users:groups``). No scope of the gateway's own token
is involved. An invalid, expired or revoked token gets 403 from the hub (401 and 404 are
treated alike): the client is refused. A hub that cannot be reached or fails (5xx, a
timeout, an answer that is not a user model) makes the check impossible, which the
client sees as 503, never as a refusal it would retry with other credentials.

The session cookie caches the answer (``cache_max_age``); roles are refreshed with the
gateway's service token (``GET {api_url}/users/<name>``) when one is configured.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from . import config
from .authenticator import (
    Authenticator,
    AuthenticatorConfigError,
    AuthenticatorError,
    AuthResult,
    split_authorization,
)

__all__ = ["JupyterHubAuthenticator", "result_from_model"]

log = logging.getLogger(__name__)

UNAVAILABLE = "JupyterHub is unavailable"

#: Hub answers that mean "this token is not (or no longer) valid".
_REFUSED = frozenset({401, 403, 404})


class _HubUnavailable(Exception):
    """The hub could not be asked or gave no usable answer (log-only message)."""


def result_from_model(model: Any) -> AuthResult | None:
    """The ``AuthResult`` of a hub user model, or ``None`` if it is not a user's."""
    if not isinstance(model, dict) or model.get("kind", "user") != "user":
        return None
    name = model.get("name")
    if not isinstance(name, str) or not name:
        return None
    groups = model.get("groups") or []
    if not isinstance(groups, list):
        groups = []
    return AuthResult(
        user=name,
        groups=frozenset(g for g in groups if isinstance(g, str)),
        admin=model.get("admin") is True,
    )


class JupyterHubAuthenticator(config.JupyterHubAuthenticator, Authenticator):
    """Users present a JupyterHub API token, checked with the hub's REST API.

    An empty ``jupyterhub_api_url`` raises ``AuthenticatorConfigError`` when the
    authenticator is created.
    """

    challenge = "jupyterhub"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.jupyterhub_api_url:
            raise AuthenticatorConfigError(
                "c.JupyterHubAuthenticator.jupyterhub_api_url: not set (nor JUPYTERHUB_API_URL)"
            )
        self._api_url = self.jupyterhub_api_url.rstrip("/")
        self._ssl = self._ssl_context()
        self._session: aiohttp.ClientSession | None = None
        if self.server_stopped_grace and not self.jupyterhub_api_token:
            raise AuthenticatorConfigError(
                "c.JupyterHubAuthenticator.server_stopped_grace needs jupyterhub_api_token "
                "(nor is JUPYTERHUB_API_TOKEN set)"
            )
        #: Owner -> when (monotonic) the hub was first seen reporting no server of theirs.
        self._serverless_since: dict[str, float] = {}

    @property
    def cookie_max_age_seconds(self) -> int | None:
        """``cache_max_age`` when set."""
        return self.cache_max_age or None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise AuthenticatorConfigError(
                f"c.JupyterHubAuthenticator.tls_ca/tls_cert/tls_key: {exc}"
            ) from None
        return context

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_seconds)
            )
        return self._session

    async def _get(self, path: str, token: str) -> tuple[int, Any]:
        """``(status, parsed JSON or None)`` of ``GET {api_url}{path}``."""
        url = self._api_url + path
        try:
            async with self._client().get(
                url, headers={"Authorization": f"token {token}"}, ssl=self._ssl or True
            ) as resp:
                if resp.status != 200:
                    return resp.status, None
                return 200, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _HubUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from None

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        """The owner of the valid hub token the request carries, else ``None``."""
        parts = split_authorization(headers)
        if parts is None or parts[0] != "jupyterhub":
            return None
        try:
            status, model = await self._get("/user", parts[1])
        except _HubUnavailable as exc:
            log.error("cannot check a JupyterHub token: %s", exc)
            raise AuthenticatorError(UNAVAILABLE, status_code=503) from None
        if status in _REFUSED:
            log.info("JupyterHub refused a token (HTTP %d)", status)
            return None
        if status != 200:
            log.error("cannot check a JupyterHub token: the hub answered HTTP %d", status)
            raise AuthenticatorError(UNAVAILABLE, status_code=503)
        result = result_from_model(model)
        if result is None:
            log.info("JupyterHub token is not a user's (kind %r); refused", _kind(model))
        return result

    async def refresh(self, user: str) -> AuthResult | None:
        """The user's groups and admin flag now, asked with the gateway's own token
        (``None`` without one, or when the hub no longer knows the user)."""
        if not self.jupyterhub_api_token:
            return None
        try:
            path = f"/users/{quote(user, safe='')}"
            status, model = await self._get(path, self.jupyterhub_api_token)
        except _HubUnavailable as exc:
            log.error("cannot refresh the roles of user %s: %s", user, exc)
            raise AuthenticatorError(UNAVAILABLE, status_code=503) from None
        if status != 200:
            if status not in _REFUSED:
                log.error("cannot refresh the roles of user %s: hub HTTP %d", user, status)
                raise AuthenticatorError(UNAVAILABLE, status_code=503)
            log.info("JupyterHub has no user %s for the gateway (HTTP %d)", user, status)
            return None
        result = result_from_model(model)
        return result if result is not None and result.user == user else None

    @property
    def owner_check_period_seconds(self) -> float | None:
        """``server_check_period`` when ``server_stopped_grace`` is set."""
        return self.server_check_period if self.server_stopped_grace else None

    async def _has_server(self, user: str) -> bool | None:
        """Whether the hub reports a running or pending server of ``user`` (a user the
        hub does not know has none); ``None`` when the hub could not tell."""
        try:
            status, model = await self._get(
                f"/users/{quote(user, safe='')}", self.jupyterhub_api_token
            )
        except _HubUnavailable as exc:
            log.warning("cannot ask JupyterHub for the servers of user %s: %s", user, exc)
            return None
        if status == 404:
            return False
        if status != 200 or not isinstance(model, dict):
            log.warning("cannot ask JupyterHub for the servers of user %s: HTTP %d", user, status)
            return None
        return bool(model.get("servers") or model.get("server") or model.get("pending"))

    async def owners_to_stop(self, owners: Collection[str], now: float | None = None) -> set[str]:
        """Owners without a notebook server for ``server_stopped_grace`` seconds."""
        now = time.monotonic() if now is None else now
        current = set(owners)
        for gone in set(self._serverless_since) - current:
            del self._serverless_since[gone]
        due = set()
        for owner in sorted(current):
            has_server = await self._has_server(owner)
            if has_server is None:
                continue
            if has_server:
                self._serverless_since.pop(owner, None)
                continue
            since = self._serverless_since.setdefault(owner, now)
            if now - since >= self.server_stopped_grace:
                log.info(
                    "user %s has had no notebook server for %.0f s; their clusters end",
                    owner,
                    now - since,
                )
                due.add(owner)
        return due

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _kind(model: Any) -> object:
    return model.get("kind") if isinstance(model, dict) else type(model).__name__
