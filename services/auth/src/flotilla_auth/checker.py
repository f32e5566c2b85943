"""The decision auth makes for each request Envoy asks about.

Protocol-free: ``servicer`` turns Envoy's ``CheckRequest`` into a ``RequestInfo`` and the
``Decision`` back into a ``CheckResponse``. The rules (docs/internals.md, "Identity"):

1. ``GET /api/health`` and ``GET /api/version`` need nobody.
2. ``Authorization: token <tok>`` on a cluster's heartbeat or DELETE: the registry's
   verdict on the token; heartbeats accept nothing else, a DELETE falls back to 3.
3. A valid session cookie, else the configured authenticator (Basic by default);
   a credential check also returns a fresh session cookie. Roles (groups, admin) are
   decided here only, when a cookie is minted; a cookie's roles older than
   ``c.Auth.roles_refresh_seconds`` are decided again (``Authenticator.refresh``, else
   the request's credentials) and the cookie re-minted with its expiry kept. A state
   change the cookie alone authorizes is refused when another site could have sent it
   (``cross_site_refusal``). A request from the web page (``x-flotilla-web``) is denied
   without a Basic challenge and told how to sign in (``Authenticator.browser_login``).
4. A ``GET`` under ``/api/v1/login/`` is a step of a browser sign-in through an identity
   provider: the authenticator answers it (``Authenticator.sign_in``) with a redirect,
   and a finished sign-in gets the session cookie; it never reaches a service.

Whatever the client sent under ``x-flotilla-*`` never reaches a service: the identity
header is overwritten with a signed one, the rest are removed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity
from flotilla_common.sessions import (
    WEB_HEADER,
    Session,
    SessionCookies,
    cross_site_refusal,
    read_cookie,
)

from .authenticator import (
    SIGN_IN_PREFIX,
    Authenticator,
    AuthenticatorError,
    AuthResult,
    BrowserLogin,
    SignInRequest,
    split_authorization,
)
from .tokens import TokenVerificationUnavailable, TokenVerifier

__all__ = ["Checker", "Decision", "RequestInfo"]

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/api/health", "/api/version"})
_HEARTBEAT = re.compile(r"/api/v1/clusters/(?P<name>[^/]+)/heartbeat")
_CLUSTER = re.compile(r"/api/v1/clusters/(?P<name>[^/]+)")
_FLOTILLA_PREFIX = "x-flotilla-"

AUTH_REQUIRED = "Authentication required"
UNAUTHORIZED = "Unauthorized"
UNAVAILABLE = "Authentication service unavailable"
NOT_FOUND = "Not Found"
SIGN_IN_FAILED = "Sign-in failed"


@dataclass(frozen=True)
class RequestInfo:
    """The parts of a request auth looks at. Header names are lower case."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def route(self) -> str:
        """The path without query string or fragment."""
        return self.path.split("?", 1)[0].split("#", 1)[0]


@dataclass(frozen=True)
class Decision:
    """Allow (with headers to set/remove upstream) or deny (with status and error body).

    ``request_headers`` overwrite same-named request headers; ``response_headers`` are
    added to the response the client gets (on denial: to the 401 itself).
    """

    allowed: bool
    status_code: int = 200
    error: str = ""
    request_headers: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    identity: Identity | None = None
    #: On a denial for the web page: how to sign in (BrowserLogin.to_json()).
    login: Mapping[str, str] | None = None

    @property
    def body(self) -> str:
        """JSON body of a denial."""
        if not self.error:
            return ""
        if self.login is None:
            return json.dumps({"error": self.error})
        return json.dumps({"error": self.error, "login": dict(self.login)})


def _deny(
    status: int, error: str, challenge: str = "", login: BrowserLogin | None = None
) -> Decision:
    headers = (("www-authenticate", challenge),) if challenge else ()
    return Decision(
        allowed=False,
        status_code=status,
        error=error,
        response_headers=(*headers, ("content-type", "application/json")),
        login=login.to_json() if login is not None else None,
    )


class Checker:
    """Decides every request; one instance per service.

    Parameters
    ----------
    authenticator
        Checks user credentials.
    token_verifier
        Checks cluster tokens (normally the registry, cached).
    cookies
        Mints and checks session cookies.
    identity_key
        Key the identity header is signed with.
    admin_users, admin_groups
        Who gets the admin flag.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        token_verifier: TokenVerifier,
        cookies: SessionCookies,
        identity_key: str,
        admin_users: Iterable[str] = (),
        admin_groups: Iterable[str] = (),
    ) -> None:
        self.authenticator = authenticator
        self.token_verifier = token_verifier
        self.cookies = cookies
        self._identity_key = identity_key
        self._admin_users = frozenset(admin_users)
        self._admin_groups = frozenset(admin_groups)

    def is_admin(self, user: str, groups: Iterable[str]) -> bool:
        """Whether configuration makes ``user`` (with ``groups``) an admin."""
        return user in self._admin_users or not self._admin_groups.isdisjoint(groups)

    def _allow(
        self,
        request: RequestInfo,
        identity: Identity | None,
        response_headers: tuple[tuple[str, str], ...] = (),
    ) -> Decision:
        stray = sorted(
            h for h in request.headers if h.startswith(_FLOTILLA_PREFIX) and h != IDENTITY_HEADER
        )
        if identity is None:
            return Decision(
                allowed=True,
                headers_to_remove=(IDENTITY_HEADER, *stray),
                response_headers=response_headers,
            )
        # The credentials (a password, a cluster token) have done their job: the services
        # behind Envoy see only the signed identity.
        credentials = ("authorization",) if "authorization" in request.headers else ()
        return Decision(
            allowed=True,
            request_headers=((IDENTITY_HEADER, sign_identity(identity, self._identity_key)),),
            headers_to_remove=(*credentials, *stray),
            response_headers=response_headers,
            identity=identity,
        )

    async def check(self, request: RequestInfo) -> Decision:
        """The decision for ``request``; never raises for anything the client sent."""
        route = request.route
        method = request.method.upper()
        if method == "GET" and route in PUBLIC_PATHS:
            return self._allow(request, None)

        if method == "GET" and route.startswith(SIGN_IN_PREFIX):
            return await self._sign_in(request)

        heartbeat = _HEARTBEAT.fullmatch(route) if method == "POST" else None
        delete = _CLUSTER.fullmatch(route) if method == "DELETE" else None
        token_route = heartbeat or delete
        if token_route is not None:
            cluster = token_route["name"]
            decision = await self._check_token(request, cluster)
            if decision is not None:
                return decision
            if heartbeat is not None:
                log.info("denied heartbeat of cluster %s: no valid cluster token", cluster)
                return _deny(401, UNAUTHORIZED, "token")
        return await self._check_user(request)

    async def _check_token(self, request: RequestInfo, cluster: str) -> Decision | None:
        parts = split_authorization(request.headers)
        if parts is None or parts[0] != "token":
            return None
        try:
            owner = await self.token_verifier.verify(cluster, parts[1])
        except TokenVerificationUnavailable:
            return _deny(503, UNAVAILABLE)
        if owner is None:
            log.info("invalid token for cluster %s (%s %s)", cluster, request.method, request.route)
            return None
        log.debug("cluster %s (owner %s) authenticated by token", cluster, owner)
        return self._allow(request, Identity(user=owner, cluster=cluster))

    def _decide(self, result: AuthResult) -> Identity:
        """The one place roles are decided: the authenticator's, plus configured admins."""
        admin = result.admin or self.is_admin(result.user, result.groups)
        return Identity(user=result.user, groups=result.groups, admin=admin)

    def _with_cookie(
        self,
        request: RequestInfo,
        identity: Identity,
        extra: tuple[tuple[str, str], ...] = (),
        expires: int | None = None,
    ) -> Decision:
        cookie = self.cookies.encode(
            identity.user, identity.groups, identity.admin, expires=expires
        )
        return self._allow(
            request,
            identity,
            response_headers=(*extra, ("set-cookie", self.cookies.set_cookie(cookie))),
        )

    async def _sign_in(self, request: RequestInfo) -> Decision:
        """A step of a browser sign-in: the authenticator's redirect, with the session
        cookie once the user has signed in."""
        query = dict(parse_qsl(urlsplit(request.path).query))
        try:
            step = await self.authenticator.sign_in(
                SignInRequest(request.route, query, request.headers)
            )
        except AuthenticatorError as exc:
            log.warning("browser sign-in failed on %s: %s", request.route, exc)
            return _deny(exc.status_code, exc.message)
        except Exception:
            log.exception("authenticator crashed on the browser sign-in %s", request.route)
            return _deny(401, SIGN_IN_FAILED)
        if step is None:
            return _deny(404, NOT_FOUND)
        headers = [("location", step.location), ("cache-control", "no-store")]
        headers += [("set-cookie", value) for value in step.set_cookies]
        if step.result is not None:
            identity = self._decide(step.result)
            cookie = self.cookies.encode(identity.user, identity.groups, identity.admin)
            headers.append(("set-cookie", self.cookies.set_cookie(cookie)))
            log.info("user %s signed in from a browser (admin=%s)", identity.user, identity.admin)
        # Not a denial: a redirect, which Envoy can only send as ext_authz's own answer.
        return Decision(allowed=False, status_code=302, response_headers=tuple(headers))

    async def _refresh(self, request: RequestInfo, session: Session) -> Decision | None:
        """Roles decided again for a session whose roles are out of date, or ``None``
        when the authenticator cannot tell without credentials."""
        try:
            result = await self.authenticator.refresh(session.user)
        except AuthenticatorError as exc:
            log.warning("cannot refresh the roles of user %s: %s", session.user, exc)
            return None
        except Exception:
            log.exception("authenticator crashed refreshing the roles of user %s", session.user)
            return None
        if result is None or result.user != session.user:
            log.info("roles of user %s out of date; asking for credentials", session.user)
            return None
        identity = self._decide(result)
        changed = (identity.groups, identity.admin) != (session.groups, session.admin)
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "roles of user %s refreshed: groups %s, admin=%s%s",
            session.user,
            sorted(identity.groups),
            identity.admin,
            " (changed)" if changed else "",
        )
        return self._with_cookie(request, identity, expires=session.expires)

    async def _check_user(self, request: RequestInfo) -> Decision:
        cookie_header = request.headers.get("cookie", "")
        if cookie_header:
            value = read_cookie(cookie_header, self.cookies.name)
            session = self.cookies.decode(value) if value else None
            if session is not None and "authorization" not in request.headers:
                refusal = cross_site_refusal(request.method, request.headers)
                if refusal is not None:
                    log.warning(
                        "user %s: %s %s: %s", session.user, request.method, request.route, refusal
                    )
                    return _deny(403, refusal)
            if session is not None and self.cookies.roles_current(session):
                identity = Identity(user=session.user, groups=session.groups, admin=session.admin)
                log.debug("user %s authenticated by session cookie", session.user)
                return self._allow(request, identity)
            if session is not None:
                refreshed = await self._refresh(request, session)
                if refreshed is not None:
                    return refreshed

        challenge = self.authenticator.challenge
        login = None
        if WEB_HEADER in request.headers:
            # The web page: no Basic challenge (the browser would open its own dialog),
            # and the way to sign in, which the page follows.
            login = self.authenticator.browser_login()
            if login.kind != "negotiate":
                challenge = ""
        try:
            result = await self.authenticator.authenticate(request.headers)
        except AuthenticatorError as exc:
            log.warning("authenticator failed on %s %s: %s", request.method, request.route, exc)
            return _deny(exc.status_code, exc.message)
        except Exception:
            # A bug in an authenticator must not become a 500 for the client.
            log.exception("authenticator crashed on %s %s", request.method, request.route)
            return _deny(401, AUTH_REQUIRED, challenge, login)
        if result is None:
            log.debug("authentication required for %s %s", request.method, request.route)
            return _deny(401, AUTH_REQUIRED, challenge, login)

        identity = self._decide(result)
        log.info("user %s authenticated (admin=%s)", result.user, identity.admin)
        return self._with_cookie(request, identity, result.response_headers)
