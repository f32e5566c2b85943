"""The authenticator seam: how user credentials become a user name and groups.

An authenticator sees the request's headers (lower-case names) and either vouches for
a user (``AuthResult``), declines (``None``: Envoy answers 401 with ``challenge`` as
``WWW-Authenticate``), or fails for a reason that is not the user's fault
(``AuthenticatorError``, e.g. an identity provider that is down).

Implementations are found through the entry-point group ``flotilla.authenticators``.
Later ones fit the same shape: Kerberos returns its mutual-auth ``WWW-Authenticate:
Negotiate <token>`` through ``AuthResult.response_headers``; JupyterHub awaits an HTTP
call to the hub (caching answers itself) and maps hub failures to ``AuthenticatorError``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from traitlets.config import Config, Configurable

__all__ = [
    "ENTRY_POINT_GROUP",
    "SIGN_IN_PREFIX",
    "AuthResult",
    "Authenticator",
    "AuthenticatorConfigError",
    "AuthenticatorError",
    "BrowserLogin",
    "SignInRequest",
    "SignInStep",
    "load_authenticator",
    "split_authorization",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flotilla.authenticators"

#: Paths under this prefix are the authenticators' own sign-in steps (``sign_in``).
SIGN_IN_PREFIX = "/api/v1/login/"


@dataclass(frozen=True)
class AuthResult:
    """A user an authenticator vouches for.

    ``admin`` lets an authenticator that knows (e.g. JupyterHub) grant the admin flag;
    the service also grants it from ``c.Auth.admin_users``/``admin_groups``.
    ``response_headers`` are added to the response sent to the client (e.g. the
    Kerberos server token); they must not include ``Set-Cookie``, which the service owns.
    """

    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False
    response_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BrowserLogin:
    """How a person in a browser signs in (the web page asks, then does it).

    ``kind``:

    * ``"form"``: the page asks for a user name and password and sends them once as
      Basic credentials; the session cookie carries the rest of the visit;
    * ``"negotiate"``: the browser's own Kerberos (SPNEGO) answers the ``Negotiate``
      challenge; the page only retries;
    * ``"redirect"``: the page sends the browser to ``url`` (an identity provider's
      login, e.g. a hub's OAuth), which comes back with credentials the authenticator
      accepts;
    * ``"none"``: no browser sign-in (use a client library).

    ``label`` is what the sign-in button says.
    """

    kind: str
    url: str = ""
    label: str = "Sign in"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "url": self.url, "label": self.label}


@dataclass(frozen=True)
class SignInRequest:
    """A browser's ``GET`` of a path under ``SIGN_IN_PREFIX`` (a step of a redirect
    sign-in): the path without its query, the query's parameters, the headers (names in
    lower case)."""

    route: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignInStep:
    """An authenticator's answer to a ``SignInRequest``: send the browser to ``location``.

    With ``result``, the user has signed in: the service sets its session cookie on the
    redirect (roles decided as for any login). ``set_cookies`` are ``Set-Cookie`` values
    of the authenticator's own cookies (e.g. an OAuth state), never the session cookie.
    """

    location: str
    result: AuthResult | None = None
    set_cookies: tuple[str, ...] = ()


class AuthenticatorError(Exception):
    """Credentials could not be checked (not: they were wrong).

    Becomes a denial with ``status_code`` and ``{"error": message}``; ``message`` is shown
    to the user, so it must not leak internals.
    """

    def __init__(self, message: str, *, status_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class AuthenticatorConfigError(ValueError):
    """Configuration an authenticator cannot work with, found when it is created.

    The message is one line naming the setting (``c.Class.trait``); the service prints it
    and exits instead of showing a traceback.
    """


class Authenticator(Configurable):
    """Base class of user authenticators.

    Subclasses set ``challenge`` (the ``WWW-Authenticate`` value sent with a 401 so the
    client knows which scheme to retry with) and implement ``authenticate``.
    """

    challenge: str = "Basic"

    @property
    def cookie_max_age_seconds(self) -> int | None:
        """Seconds a session cookie from this authenticator's logins is accepted, when it
        overrides ``c.Auth.cookie_max_age_seconds`` (``None``: it does not)."""
        return None

    def browser_login(self) -> BrowserLogin:
        """How a browser signs in (the web page's sign-in seam): by default a form for
        a Basic challenge, the browser's Kerberos for a Negotiate one, else none."""
        scheme = self.challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return BrowserLogin("form")
        if scheme == "negotiate":
            return BrowserLogin("negotiate", label="Sign in with Kerberos")
        return BrowserLogin("none")

    async def sign_in(self, request: SignInRequest) -> SignInStep | None:
        """The next step of a browser sign-in through an identity provider.

        Asked for every ``GET`` under ``SIGN_IN_PREFIX`` (e.g. the ``url`` of a
        ``redirect`` ``browser_login`` and the callback the provider sends the browser
        back to), before any cookie or credential is looked at.

        Returns
        -------
        SignInStep or None
            Where to send the browser, or ``None`` (the default) when the path is not
            this authenticator's: the client gets 404. Raise ``AuthenticatorError`` for
            a sign-in that cannot go on (a bad callback: 4xx; the provider down: 503).
        """
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        """Check the credentials in ``headers``.

        Parameters
        ----------
        headers
            The request's headers (gRPC metadata for gRPC calls), names in lower case.

        Returns
        -------
        AuthResult or None
            The user, or ``None`` when credentials are missing, malformed or wrong.
            Must never raise for bad input; raise ``AuthenticatorError`` only when the
            check itself could not be made.
        """
        raise NotImplementedError

    async def refresh(self, user: str) -> AuthResult | None:
        """The current groups (and admin flag) of ``user``, who authenticated earlier,
        without credentials: asked when the roles in a session cookie are older than
        ``c.Auth.roles_refresh_seconds``.

        Returns ``None`` when this authenticator cannot tell without credentials (the
        default) or no longer knows the user: the client must authenticate again.
        May raise ``AuthenticatorError`` like ``authenticate``.
        """
        return None

    @property
    def owner_check_period_seconds(self) -> float | None:
        """Seconds between ``owners_to_stop`` calls, or ``None`` (the default): the
        authenticator never ends anyone's clusters."""
        return None

    async def owners_to_stop(self, owners: Collection[str]) -> set[str]:
        """Of ``owners`` (the users with active clusters), those whose clusters must end
        now, e.g. because their session at the identity provider is gone.

        Asked every ``owner_check_period_seconds``; auth then stops those users'
        clusters. Must not raise for one user's failed lookup: leave that user out.
        """
        return set()

    async def close(self) -> None:
        """Release resources (HTTP sessions, caches) at shutdown."""


def split_authorization(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """``(scheme in lower case, credentials)`` of the Authorization header, if well formed."""
    value = headers.get("authorization", "")
    scheme, sep, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if not scheme or not sep or not credentials:
        return None
    return scheme.lower(), credentials


def _resolve(name: str) -> type[Authenticator]:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if found:
        obj: Any = found[0].load()
    else:
        module_name, sep, attr = name.replace(":", ".").rpartition(".")
        if not sep or not module_name:
            known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ValueError(f"unknown authenticator {name!r}; registered: {', '.join(known)}")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import authenticator {name!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Authenticator)):
        raise ValueError(f"authenticator {name!r} is not an Authenticator subclass")
    return obj


def load_authenticator(name: str, config: Config) -> Authenticator:
    """Instantiate the authenticator ``name`` (entry-point name or ``module:Class``)."""
    cls = _resolve(name)
    log.info("using authenticator %s (%s.%s)", name, cls.__module__, cls.__qualname__)
    return cls(config=config)
