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

A browser signs in with the OAuth 2 authorization-code flow the hub offers its services
(the gateway registered with ``oauth_client_id`` and ``oauth_redirect_uri``):

1. ``GET /api/v1/login/jupyterhub`` (the web page's button) is sent to the hub's
   ``/hub/api/oauth2/authorize`` with a random ``state``, also kept in a short-lived
   HttpOnly cookie;
2. the hub signs the user in and sends the browser back to
   ``/api/v1/login/jupyterhub/callback?code=..&state=..``; a state that is not the
   cookie's is refused (403);
3. the code is exchanged at ``POST {api_url}/oauth2/token`` (the client secret is the
   service's API token), the access token's ``GET {api_url}/user`` is the user (its
   identify scopes give the name, groups and admin flag), and the browser is sent to
   ``/`` with the session cookie. A code the hub refuses is a 403, a hub that cannot be
   asked a 503.
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from flotilla_common.config import Deployment
from flotilla_common.sessions import read_cookie

from . import config
from .authenticator import (
    SIGN_IN_PREFIX,
    Authenticator,
    AuthenticatorConfigError,
    AuthenticatorError,
    AuthResult,
    BrowserLogin,
    SignInRequest,
    SignInStep,
    split_authorization,
)

__all__ = ["CALLBACK_PATH", "LOGIN_PATH", "JupyterHubAuthenticator", "result_from_model"]

log = logging.getLogger(__name__)

UNAVAILABLE = "JupyterHub is unavailable"

#: The web page's sign-in button, and where the hub sends the browser back to.
LOGIN_PATH = SIGN_IN_PREFIX + "jupyterhub"
CALLBACK_PATH = LOGIN_PATH + "/callback"
#: The OAuth state of a sign-in under way, sent back only to LOGIN_PATH and below.
STATE_COOKIE = "flotilla-jupyterhub-state"
STATE_MAX_AGE_SECONDS = 600
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")

NO_BROWSER_SIGN_IN = "This gateway offers no sign-in with JupyterHub from a browser"
STATE_MISMATCH = (
    "Sign-in with JupyterHub failed: it was not started from this browser, or it took "
    "too long. Start again from the gateway's page."
)
REFUSED_CODE = (
    "JupyterHub refused the sign-in (the code is wrong, used or expired). "
    "Start again from the gateway's page."
)

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
        self._hub_url = self._browser_hub_url()
        self._redirect_url = self.oauth_redirect_url or (
            Deployment(config=self.config).resolved_public_url + CALLBACK_PATH
        )
        if not _is_http_url(self._redirect_url):
            raise AuthenticatorConfigError(
                "c.JupyterHubAuthenticator.oauth_redirect_url: not an http(s) URL: "
                f"{self._redirect_url!r}"
            )

    def _browser_hub_url(self) -> str:
        """Where browsers reach the hub; empty when it cannot be told (no browser
        sign-in, while API tokens still work)."""
        if self.jupyterhub_url:
            if not _is_http_url(self.jupyterhub_url):
                raise AuthenticatorConfigError(
                    "c.JupyterHubAuthenticator.jupyterhub_url: not an http(s) URL: "
                    f"{self.jupyterhub_url!r}"
                )
            return self.jupyterhub_url.rstrip("/")
        if self._api_url.endswith("/hub/api"):
            return self._api_url.removesuffix("/hub/api")
        if self.jupyterhub_api_token:
            log.warning(
                "c.JupyterHubAuthenticator.jupyterhub_url: not set, and jupyterhub_api_url "
                "(%s) does not end in /hub/api to derive it from: the web page offers no "
                "sign-in with JupyterHub",
                self._api_url,
            )
        return ""

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

    async def _post_form(self, path: str, form: Mapping[str, str]) -> tuple[int, Any]:
        """``(status, parsed JSON or None)`` of ``POST {api_url}{path}`` with ``form``."""
        url = self._api_url + path
        try:
            async with self._client().post(url, data=dict(form), ssl=self._ssl or True) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
                return resp.status, answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _HubUnavailable(f"POST {url}: {type(exc).__name__}: {exc}") from None

    def browser_login(self) -> BrowserLogin:
        """A redirect to the hub's OAuth sign-in; none without the service's token (the
        OAuth client secret) or the hub's browser-facing URL."""
        if not (self.jupyterhub_api_token and self._hub_url):
            return BrowserLogin("none")
        return BrowserLogin("redirect", url=LOGIN_PATH, label="Sign in with JupyterHub")

    async def sign_in(self, request: SignInRequest) -> SignInStep | None:
        """The OAuth flow's start (to the hub) and callback (from it)."""
        if request.route not in (LOGIN_PATH, CALLBACK_PATH):
            return None
        if not (self.jupyterhub_api_token and self._hub_url):
            raise AuthenticatorError(NO_BROWSER_SIGN_IN, status_code=404)
        if request.route == LOGIN_PATH:
            return self._authorize()
        return await self._callback(request)

    def _state_cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self._redirect_url.startswith("https:") else ""
        return (
            f"{STATE_COOKIE}={value}; Path={LOGIN_PATH}; Max-Age={max_age}; HttpOnly; "
            f"SameSite=Lax{secure}"
        )

    def _authorize(self) -> SignInStep:
        state = secrets.token_urlsafe(32)
        query = urlencode(
            {
                "client_id": self.oauth_client_id,
                "redirect_uri": self._redirect_url,
                "response_type": "code",
                "state": state,
            }
        )
        return SignInStep(
            f"{self._hub_url}/hub/api/oauth2/authorize?{query}",
            set_cookies=(self._state_cookie(state, STATE_MAX_AGE_SECONDS),),
        )

    async def _callback(self, request: SignInRequest) -> SignInStep:
        expected = read_cookie(request.headers.get("cookie", ""), STATE_COOKIE)
        state = request.query.get("state", "")
        if not expected or not state or not secrets.compare_digest(expected, state):
            log.info("JupyterHub sign-in refused: its state is not this browser's")
            # 403: a callback this browser did not start is refused, not malformed.
            raise AuthenticatorError(STATE_MISMATCH, status_code=403)
        error = request.query.get("error")
        if error:
            log.info("JupyterHub did not sign a user in: %r", error[:200])
            # An OAuth error code (RFC 6749 4.1.2.1) is shown; other text is not echoed.
            code_name = error if _OAUTH_ERROR.fullmatch(error) else "error"
            raise AuthenticatorError(
                f"JupyterHub did not sign you in ({code_name})", status_code=403
            )
        code = request.query.get("code", "")
        if not code:
            raise AuthenticatorError("JupyterHub's answer has no code", status_code=403)
        try:
            access_token = await self._exchange(code)
        except _HubUnavailable as exc:
            log.error("cannot finish a JupyterHub sign-in: %s", exc)
            raise AuthenticatorError(UNAVAILABLE, status_code=503) from None
        status, model = await self._user("finish a JupyterHub sign-in", access_token)
        if status != 200:
            log.error("cannot finish a JupyterHub sign-in: GET /user answered HTTP %d", status)
            raise AuthenticatorError(UNAVAILABLE, status_code=503)
        result = result_from_model(model)
        if result is None:
            log.info("JupyterHub signed in something that is not a user (kind %r)", _kind(model))
            raise AuthenticatorError(REFUSED_CODE, status_code=403)
        return SignInStep("/", result=result, set_cookies=(self._state_cookie("", 0),))

    async def _user(self, doing: str, token: str) -> tuple[int, Any]:
        """The hub's ``GET /user`` for ``token``; a hub that cannot answer is a 503."""
        try:
            return await self._get("/user", token)
        except _HubUnavailable as exc:
            log.error("cannot %s: %s", doing, exc)
            raise AuthenticatorError(UNAVAILABLE, status_code=503) from None

    async def _exchange(self, code: str) -> str:
        """The access token the hub gives for ``code``."""
        status, answer = await self._post_form(
            "/oauth2/token",
            {
                "client_id": self.oauth_client_id,
                "client_secret": self.jupyterhub_api_token,
                "grant_type": "authorization_code",
                "redirect_uri": self._redirect_url,
                "code": code,
            },
        )
        if status >= 500:
            raise _HubUnavailable(f"POST /oauth2/token answered HTTP {status}")
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            why = answer.get("error") if isinstance(answer, dict) else None
            log.warning(
                "JupyterHub refused an OAuth code (HTTP %d, %s; client %s)",
                status,
                why,
                self.oauth_client_id,
            )
            raise AuthenticatorError(REFUSED_CODE, status_code=403)
        return token

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        """The owner of the valid hub token the request carries, else ``None``."""
        parts = split_authorization(headers)
        if parts is None or parts[0] != "jupyterhub":
            return None
        status, model = await self._user("check a JupyterHub token", parts[1])
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


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
