"""Session cookies: a signed user, groups, admin flag and expiry.

The value is ``<base64url(json)>.<base64url(hmac-sha256)>`` keyed with the deployment's
``cookie_key``, so it survives restarts of the service and needs no server-side state.

Only the auth service mints them (after a credential check). The registry checks them
itself on the REST API's session route, which Envoy sends there without asking auth
(a request with the cookie and no ``Authorization`` header): a cookie stands for the
identity auth vouched for until it expires, so checking it is a signature check, not
a round trip. The settings stay in ``c.Auth`` (``cookie_name``,
``cookie_max_age_seconds``, ``cookie_secure``, ``roles_refresh_seconds``);
:func:`session_cookies` reads them for any service.

Roles (groups and the admin flag) are decided in one place, auth, when it mints a
cookie, and the cookie records when. Every service takes them from the cookie only
while they are younger than the refresh period (:meth:`SessionCookies.roles_current`);
past it, auth decides them again and the registry answers 401, so a change of a
user's groups or admin rights takes effect within that period.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets.config import Config

__all__ = [
    "DEFAULT_COOKIE_NAME",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_ROLES_REFRESH_SECONDS",
    "WEB_HEADER",
    "Session",
    "SessionCookies",
    "cookie_name",
    "cross_site_refusal",
    "read_cookie",
    "session_cookies",
]

log = logging.getLogger(__name__)

#: Defaults of ``c.Auth.cookie_name`` and ``c.Auth.cookie_max_age_seconds``.
DEFAULT_COOKIE_NAME = "flotilla-session"
DEFAULT_MAX_AGE_SECONDS = 300
#: Default of ``c.Auth.roles_refresh_seconds``.
DEFAULT_ROLES_REFRESH_SECONDS = 60

# Domain separation: the MAC covers this prefix, so no other value signed with the
# same key can pass for a session.
_CONTEXT = b"flotilla-session-v1\n"


#: The header Flotilla's web page sends with every API call: a denial then comes without a
#: Basic challenge (no browser dialog) and says how to sign in.
WEB_HEADER = "x-flotilla-web"
#: Methods that change nothing, which a session cookie alone may always authorize.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The unsafe method another site's page may send without a preflight.
_SIMPLE_METHODS = frozenset({"POST"})
#: Request bodies a cross-site page cannot send without the browser asking first (CORS).
_NON_SIMPLE_TYPES = ("application/json", "application/grpc")


def cross_site_refusal(method: str, headers: Mapping[str, str]) -> str | None:
    """Why a state change authorized by a session cookie alone (no Authorization header)
    is refused as possibly cross-site (``None``: it is not). ``headers``: looked up by
    lower-case names (a plain dict of those, or a case-insensitive mapping).

    Browsers say where a request comes from (``Sec-Fetch-Site``); a request another site
    makes can carry the cookie (SameSite=Lax covers only cross-site ones), but it cannot
    carry a body of a non-simple type without a CORS preflight, which Flotilla never
    answers. Non-browser clients send neither header nor simple bodies."""
    method = method.upper()
    if method in _SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site", "")
    if site in ("cross-site", "same-site"):
        return f"Cross-site request refused (Sec-Fetch-Site: {site})"
    if method not in _SIMPLE_METHODS:
        return None  # another site's page cannot send it without a preflight
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not content_type.startswith(_NON_SIMPLE_TYPES):
        shown = content_type or "none"
        return f"Content-Type {shown} refused with a session cookie: send application/json"
    return None


@dataclass(frozen=True)
class Session:
    """What a valid session cookie vouches for."""

    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False
    expires: int = 0
    #: When auth decided ``groups`` and ``admin`` (epoch seconds); 0 if the cookie does
    #: not say (minted before cookies recorded it), so they count as out of date.
    decided: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (several joined with ``;``)."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


class SessionCookies:
    """Mints and checks session cookies.

    Parameters
    ----------
    key
        The secret (``Deployment.secret("cookie_key")``).
    name
        Cookie name.
    max_age_seconds
        How long the service accepts a cookie; browsers keep it twice as long.
    secure
        Add the ``Secure`` attribute.
    roles_refresh_seconds
        How long the roles in a cookie are taken as they are.
    """

    def __init__(
        self,
        key: str,
        name: str,
        max_age_seconds: int,
        secure: bool = False,
        roles_refresh_seconds: int = DEFAULT_ROLES_REFRESH_SECONDS,
    ) -> None:
        self._key = key.encode("utf-8")
        self.name = name
        self.max_age_seconds = max_age_seconds
        self.secure = secure
        self.roles_refresh_seconds = roles_refresh_seconds

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()

    def encode(
        self,
        user: str,
        groups: frozenset[str],
        admin: bool,
        now: float | None = None,
        expires: int | None = None,
    ) -> str:
        """A cookie value for this user with roles decided at ``now``, valid for
        ``max_age_seconds`` from then or until ``expires`` (a refresh keeps the
        login's expiry)."""
        issued = int(now if now is not None else time.time())
        payload = json.dumps(
            {
                "u": user,
                "g": sorted(groups),
                "a": admin,
                "e": issued + self.max_age_seconds if expires is None else expires,
                "d": issued,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, value: str, now: float | None = None) -> Session | None:
        """The session in ``value``, or ``None`` if it is malformed, forged or expired."""
        try:
            payload_b64, mac_b64 = value.split(".", 1)
            payload = _unb64(payload_b64)
            mac = _unb64(mac_b64)
        except (ValueError, UnicodeEncodeError):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(payload)
            session = Session(
                user=str(data["u"]),
                groups=frozenset(str(g) for g in data["g"]),
                admin=bool(data["a"]),
                expires=int(data["e"]),
                decided=int(data.get("d", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        current = now if now is not None else time.time()
        # The second bound applies a lowered max age to cookies minted before the change.
        if not (current < session.expires <= current + self.max_age_seconds + 1):
            return None
        if not session.user:
            return None
        return session

    def roles_current(self, session: Session, now: float | None = None) -> bool:
        """Whether the session's groups and admin flag were decided less than
        ``roles_refresh_seconds`` ago (else auth must decide them again)."""
        current = now if now is not None else time.time()
        return current - self.roles_refresh_seconds < session.decided <= current + 1

    def set_cookie(self, value: str) -> str:
        """The ``Set-Cookie`` header value carrying ``value``."""
        parts = [
            f"{self.name}={value}",
            f"Max-Age={2 * self.max_age_seconds}",
            "Path=/",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


def _auth_section(config: Config) -> Any:
    return config.Auth if "Auth" in config else Config()


def cookie_name(config: Config) -> str:
    """``c.Auth.cookie_name`` (what Envoy matches to send a request the session way)."""
    return str(_auth_section(config).get("cookie_name", DEFAULT_COOKIE_NAME))


def session_cookies(config: Config) -> SessionCookies:
    """The session cookies of this deployment, as ``c.Auth`` configures them."""
    from .config import Deployment

    auth = _auth_section(config)
    return SessionCookies(
        Deployment(config=config).secret("cookie_key"),
        cookie_name(config),
        int(auth.get("cookie_max_age_seconds", DEFAULT_MAX_AGE_SECONDS)),
        bool(auth.get("cookie_secure", False)),
        int(auth.get("roles_refresh_seconds", DEFAULT_ROLES_REFRESH_SECONDS)),
    )
