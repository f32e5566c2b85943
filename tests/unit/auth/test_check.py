"""The auth decision, driven through the servicer's Check with hand-built CheckRequests."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from flotilla_auth.authenticator import (
    Authenticator,
    AuthenticatorError,
    AuthResult,
    SignInRequest,
    SignInStep,
)
from flotilla_auth.basic import BasicAuthenticator
from flotilla_auth.checker import Checker
from flotilla_auth.servicer import AuthorizationServicer
from flotilla_auth.tokens import TokenVerificationUnavailable
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity, verify_identity
from flotilla_common.sessions import Session, SessionCookies
from google.rpc import code_pb2
from traitlets.config import Config

IDENTITY_KEY = "identity-key-for-tests"
COOKIE_KEY = "cookie-key-for-tests"
COOKIE = "flotilla-session"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class FakeTokens:
    """Token verifier answering from a dict; counts calls."""

    def __init__(self, tokens: Mapping[tuple[str, str], str], down: bool = False) -> None:
        self.tokens = dict(tokens)
        self.down = down
        self.calls: list[tuple[str, str]] = []

    async def verify(self, cluster: str, token: str) -> str | None:
        self.calls.append((cluster, token))
        if self.down:
            raise TokenVerificationUnavailable("UNAVAILABLE")
        return self.tokens.get((cluster, token))


def basic(user: str, password: str = "", encoding: str = "latin-1") -> str:
    raw = f"{user}:{password}".encode(encoding)
    return "Basic " + base64.b64encode(raw).decode()


def check_request(
    method: str, path: str, headers: Mapping[str, str] | None = None
) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method, path=path, headers=dict(headers or {})
    )
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def make_servicer(
    *,
    password: str = "secret",
    user_groups: dict[str, list[str]] | None = None,
    admin_users: tuple[str, ...] = (),
    admin_groups: tuple[str, ...] = (),
    tokens: FakeTokens | None = None,
    authenticator: Authenticator | None = None,
    roles_refresh_seconds: int = 60,
) -> AuthorizationServicer:
    config = Config()
    config.BasicAuthenticator.password = password
    config.BasicAuthenticator.user_groups = user_groups or {}
    checker = Checker(
        authenticator=authenticator or BasicAuthenticator(config=config),
        token_verifier=tokens or FakeTokens({}),
        cookies=SessionCookies(
            COOKIE_KEY, COOKIE, 300, roles_refresh_seconds=roles_refresh_seconds
        ),
        identity_key=IDENTITY_KEY,
        admin_users=admin_users,
        admin_groups=admin_groups,
    )
    return AuthorizationServicer(checker)


async def check(
    servicer: AuthorizationServicer,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
) -> external_auth_pb2.CheckResponse:
    return await servicer.Check(check_request(method, path, headers), None)


def upstream_headers(resp: external_auth_pb2.CheckResponse) -> dict[str, str]:
    return {o.header.key: o.header.value for o in resp.ok_response.headers}


def client_headers(resp: external_auth_pb2.CheckResponse) -> dict[str, str]:
    options = (
        resp.ok_response.response_headers_to_add
        if resp.HasField("ok_response")
        else resp.denied_response.headers
    )
    return {o.header.key.lower(): o.header.value for o in options}


def identity_of(resp: external_auth_pb2.CheckResponse) -> Identity:
    assert resp.status.code == code_pb2.OK, resp
    return verify_identity(upstream_headers(resp)[IDENTITY_HEADER], IDENTITY_KEY)


def assert_denied(
    resp: external_auth_pb2.CheckResponse,
    challenge: str = "Basic",
    error: str = "Authentication required",
    status: int = 401,
) -> None:
    assert resp.status.code != code_pb2.OK
    assert resp.HasField("denied_response")
    assert resp.denied_response.status.code == status
    headers = client_headers(resp)
    if challenge:
        assert headers["www-authenticate"] == challenge
    else:
        assert "www-authenticate" not in headers
    assert headers["content-type"] == "application/json"
    assert json.loads(resp.denied_response.body) == {"error": error}


def session_cookie(resp: external_auth_pb2.CheckResponse) -> str:
    set_cookie = client_headers(resp)["set-cookie"]
    first = set_cookie.split(";", 1)[0]
    name, _, value = first.partition("=")
    assert name == COOKIE
    return value


# -- public routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/health", "/api/version", "/api/health?x=1", "/api/version?"]
)
async def test_public_routes_need_no_identity(path: str) -> None:
    forged = sign_identity(Identity("mallory", admin=True), IDENTITY_KEY)
    resp = await check(make_servicer(), "GET", path, {IDENTITY_HEADER: forged})
    assert resp.status.code == code_pb2.OK
    assert upstream_headers(resp) == {}
    assert IDENTITY_HEADER in resp.ok_response.headers_to_remove
    assert not resp.ok_response.response_headers_to_add


async def test_public_paths_only_for_get() -> None:
    resp = await check(make_servicer(), "POST", "/api/health")
    assert_denied(resp)


# -- Basic -----------------------------------------------------------------------------------


async def test_basic_ok_sets_identity_and_cookie() -> None:
    servicer = make_servicer(user_groups={"alice": ["dev", "ops"]})
    resp = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("alice", "secret")}
    )
    ident = identity_of(resp)
    assert ident == Identity("alice", frozenset({"dev", "ops"}), admin=False, cluster="")
    (option,) = [o for o in resp.ok_response.headers if o.header.key == IDENTITY_HEADER]
    assert option.append_action == OVERWRITE
    set_cookie = client_headers(resp)["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert set_cookie.endswith("; Max-Age=600; Path=/; HttpOnly; SameSite=Lax")


async def test_basic_scheme_is_case_insensitive() -> None:
    header = basic("alice", "secret").replace("Basic", "bAsIc")
    resp = await check(make_servicer(), "GET", "/api/v1/options", {"authorization": header})
    assert identity_of(resp).user == "alice"


async def test_wrong_password_is_401() -> None:
    resp = await check(
        make_servicer(), "GET", "/api/v1/options", {"authorization": basic("alice", "wrong")}
    )
    assert_denied(resp)
    assert resp.status.code == code_pb2.UNAUTHENTICATED


async def test_no_credentials_is_401() -> None:
    assert_denied(await check(make_servicer(), "GET", "/api/v1/clusters/"))


async def test_without_password_any_password_is_accepted() -> None:
    servicer = make_servicer(password="")
    resp = await check(servicer, "GET", "/api/v1/options", {"authorization": basic("bob", "x")})
    assert identity_of(resp).user == "bob"
    resp = await check(servicer, "GET", "/api/v1/options", {"authorization": basic("bob")})
    assert identity_of(resp).user == "bob"


async def test_latin1_user_name_from_the_dask_gateway_client() -> None:
    resp = await check(
        make_servicer(), "GET", "/api/v1/options", {"authorization": basic("josé", "secret")}
    )
    assert identity_of(resp).user == "josé"
    utf8 = basic("josé", "secret", encoding="utf-8")
    resp = await check(make_servicer(), "GET", "/api/v1/options", {"authorization": utf8})
    assert identity_of(resp).user == "josé"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic ",
        "Basic    ",
        "Basic!",
        "Basicabc",
        "Basic !!!not-base64!!!",
        "Basic YWxpY2U6c2VjcmV",  # truncated: bad padding
        "Basic " + _b64(b"alice-no-colon"),
        "Basic " + _b64(b":secret"),  # empty user
        "Basic " + _b64(b" alice:secret"),  # whitespace around the name
        "Basic " + _b64(b"al\x00ice:secret"),  # control character
        "Basic " + _b64(b"al\nice:secret"),
        "Basic YWxpY2U6c2VjcmV0ñ",  # non-ASCII in the header
        "Bearer abc",
        "Negotiate abc",
        "token abc",
        "",
        " ",
    ],
)
async def test_malformed_authorization_is_401(header: str) -> None:
    resp = await check(
        make_servicer(password=""), "GET", "/api/v1/options", {"authorization": header}
    )
    assert_denied(resp)


async def test_raw_header_map_with_bytes() -> None:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET",
        path="/api/v1/options",
        header_map=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key="authorization", raw_value=b"Basic \xff\xfe")]
        ),
    )
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )
    assert_denied(await make_servicer().Check(request, None))

    request.attributes.request.http.header_map.headers[0].raw_value = basic(
        "alice", "secret"
    ).encode()
    resp = await make_servicer().Check(request, None)
    assert identity_of(resp).user == "alice"


# -- session cookies ---------------------------------------------------------------------------


async def test_cookie_roundtrip() -> None:
    servicer = make_servicer(user_groups={"alice": ["dev"]}, admin_groups=("dev",))
    first = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("alice", "secret")}
    )
    value = session_cookie(first)
    second = await check(
        servicer,
        "POST",
        "/api/v1/clusters/",
        {"cookie": f"a=b; {COOKIE}={value}; c=d", "content-type": "application/json"},
    )
    assert identity_of(second) == Identity("alice", frozenset({"dev"}), admin=True)
    # Cookie-authenticated requests do not refresh the cookie.
    assert "set-cookie" not in client_headers(second)


async def test_cookie_wins_over_bad_credentials() -> None:
    servicer = make_servicer()
    first = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("alice", "secret")}
    )
    resp = await check(
        servicer,
        "GET",
        "/api/v1/clusters/",
        {"cookie": f"{COOKIE}={session_cookie(first)}", "authorization": "Basic"},
    )
    assert identity_of(resp).user == "alice"


async def test_expired_cookie_is_rejected_and_credentials_work_again() -> None:
    servicer = make_servicer()
    cookies = SessionCookies(COOKIE_KEY, COOKIE, 300)
    old = cookies.encode("alice", frozenset(), False, now=time.time() - 301)
    resp = await check(servicer, "GET", "/api/v1/clusters/", {"cookie": f"{COOKIE}={old}"})
    assert_denied(resp)
    # The client retries with credentials after the 401 and gets a fresh cookie.
    resp = await check(
        servicer,
        "GET",
        "/api/v1/clusters/",
        {"cookie": f"{COOKIE}={old}", "authorization": basic("alice", "secret")},
    )
    assert identity_of(resp).user == "alice"
    assert session_cookie(resp) != old


@pytest.mark.parametrize(
    "value",
    ["", "garbage", "a.b", "....", "ñ.ñ", "x.y.z"],
)
async def test_malformed_cookie_is_ignored(value: str) -> None:
    resp = await check(make_servicer(), "GET", "/api/v1/clusters/", {"cookie": f"{COOKIE}={value}"})
    assert_denied(resp)


async def test_cookie_signed_with_another_key_or_tampered_is_rejected() -> None:
    other = SessionCookies("another-key", COOKIE, 300).encode("alice", frozenset(), True)
    resp = await check(make_servicer(), "GET", "/api/v1/clusters/", {"cookie": f"{COOKIE}={other}"})
    assert_denied(resp)

    good = SessionCookies(COOKIE_KEY, COOKIE, 300).encode("alice", frozenset(), False)
    payload, mac = good.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["a"] = True
    forged_payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    resp = await check(
        make_servicer(), "GET", "/api/v1/clusters/", {"cookie": f"{COOKIE}={forged_payload}.{mac}"}
    )
    assert_denied(resp)


def test_lowered_max_age_applies_to_existing_cookies() -> None:
    long_lived = SessionCookies(COOKIE_KEY, COOKIE, 3600).encode("alice", frozenset(), False)
    assert SessionCookies(COOKIE_KEY, COOKIE, 3600).decode(long_lived) is not None
    assert SessionCookies(COOKIE_KEY, COOKIE, 300).decode(long_lived) is None


# -- identity header hygiene -------------------------------------------------------------------


async def test_forged_identity_header_is_replaced() -> None:
    forged = sign_identity(Identity("root", admin=True), IDENTITY_KEY)
    resp = await check(
        make_servicer(),
        "DELETE",
        "/api/v1/clusters/abc",
        {
            "authorization": basic("alice", "secret"),
            IDENTITY_HEADER: forged,
            "x-flotilla-internal-token": "guess",
            "x-flotilla-other": "1",
        },
    )
    assert identity_of(resp) == Identity("alice")
    assert IDENTITY_HEADER not in resp.ok_response.headers_to_remove
    assert set(resp.ok_response.headers_to_remove) == {
        "authorization",  # credentials never travel past auth
        "x-flotilla-internal-token",
        "x-flotilla-other",
    }


# -- cluster tokens ----------------------------------------------------------------------------

TOKENS = {("ns.c1", "tok-1"): "bob"}


async def test_heartbeat_with_valid_token() -> None:
    tokens = FakeTokens(TOKENS)
    servicer = make_servicer(tokens=tokens)
    resp = await check(
        servicer, "POST", "/api/v1/clusters/ns.c1/heartbeat", {"authorization": "token tok-1"}
    )
    assert identity_of(resp) == Identity("bob", cluster="ns.c1")
    assert "set-cookie" not in client_headers(resp)
    assert tokens.calls == [("ns.c1", "tok-1")]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "token wrong"},
        {"authorization": "token"},
        {"authorization": "Basic " + _b64(b"bob:secret")},
    ],
)
async def test_heartbeat_requires_a_valid_token(headers: dict[str, str]) -> None:
    resp = await check(
        make_servicer(tokens=FakeTokens(TOKENS)),
        "POST",
        "/api/v1/clusters/ns.c1/heartbeat",
        headers,
    )
    assert_denied(resp, challenge="token", error="Unauthorized")


async def test_token_of_another_cluster_is_rejected() -> None:
    resp = await check(
        make_servicer(tokens=FakeTokens(TOKENS)),
        "POST",
        "/api/v1/clusters/ns.c2/heartbeat",
        {"authorization": "token tok-1"},
    )
    assert_denied(resp, challenge="token", error="Unauthorized")


async def test_heartbeat_ignores_session_cookie() -> None:
    servicer = make_servicer(tokens=FakeTokens(TOKENS))
    first = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("bob", "secret")}
    )
    resp = await check(
        servicer,
        "POST",
        "/api/v1/clusters/ns.c1/heartbeat",
        {"cookie": f"{COOKIE}={session_cookie(first)}"},
    )
    assert_denied(resp, challenge="token", error="Unauthorized")


async def test_delete_with_valid_token() -> None:
    resp = await check(
        make_servicer(tokens=FakeTokens(TOKENS)),
        "DELETE",
        "/api/v1/clusters/ns.c1",
        {"authorization": "token tok-1"},
    )
    assert identity_of(resp) == Identity("bob", cluster="ns.c1")


async def test_delete_with_bad_token_falls_back_to_user_auth() -> None:
    servicer = make_servicer(tokens=FakeTokens(TOKENS))
    resp = await check(servicer, "DELETE", "/api/v1/clusters/ns.c1", {"authorization": "token x"})
    assert_denied(resp)
    first = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("bob", "secret")}
    )
    resp = await check(
        servicer,
        "DELETE",
        "/api/v1/clusters/ns.c1",
        {"authorization": "token x", "cookie": f"{COOKIE}={session_cookie(first)}"},
    )
    assert identity_of(resp) == Identity("bob")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/clusters/ns.c1"),
        ("POST", "/api/v1/clusters/ns.c1/scale"),
        ("DELETE", "/api/v1/clusters/"),
        ("DELETE", "/api/v1/clusters/ns.c1/extra"),
        ("POST", "/flotilla.registry.v1.RegistryService/StopCluster"),
    ],
)
async def test_token_only_counts_on_token_routes(method: str, path: str) -> None:
    tokens = FakeTokens(TOKENS)
    resp = await check(make_servicer(tokens=tokens), method, path, {"authorization": "token tok-1"})
    assert_denied(resp)
    assert tokens.calls == []


async def test_heartbeat_path_with_query() -> None:
    resp = await check(
        make_servicer(tokens=FakeTokens(TOKENS)),
        "POST",
        "/api/v1/clusters/ns.c1/heartbeat?x=1",
        {"authorization": "token tok-1"},
    )
    assert identity_of(resp).cluster == "ns.c1"


async def test_registry_down_is_503() -> None:
    resp = await check(
        make_servicer(tokens=FakeTokens(TOKENS, down=True)),
        "POST",
        "/api/v1/clusters/ns.c1/heartbeat",
        {"authorization": "token tok-1"},
    )
    assert_denied(resp, challenge="", error="Authentication service unavailable", status=503)
    assert resp.status.code == code_pb2.UNAVAILABLE


# -- admin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "admin"),
    [("root", True), ("ops-person", True), ("alice", False)],
)
async def test_admin_flag(user: str, admin: bool) -> None:
    servicer = make_servicer(
        user_groups={"ops-person": ["ops"], "alice": ["dev"]},
        admin_users=("root",),
        admin_groups=("ops",),
    )
    resp = await check(servicer, "GET", "/api/v1/options", {"authorization": basic(user, "secret")})
    assert identity_of(resp).admin is admin


# -- roles: decided once, refreshed after roles_refresh_seconds ---------------------------------


def minted(user: str, groups: frozenset[str] = frozenset(), admin: bool = False, age: float = 0):
    """A cookie whose roles auth decided ``age`` seconds ago (still within its max age)."""
    return SessionCookies(COOKIE_KEY, COOKIE, 300).encode(
        user, groups, admin, now=time.time() - age
    )


def decoded(resp: external_auth_pb2.CheckResponse) -> Session:
    session = SessionCookies(COOKIE_KEY, COOKIE, 300).decode(session_cookie(resp))
    assert session is not None
    return session


async def test_cookie_roles_are_those_decided_at_login_until_the_refresh_period() -> None:
    """Auth no longer re-checks configured admins on a cookie (the registry, which checks
    cookies itself, could not): the roles are the cookie's while they are current."""
    servicer = make_servicer(admin_users=("bob",), user_groups={"bob": ["gpu"]})
    resp = await check(
        servicer, "GET", "/api/v1/options", {"cookie": f"{COOKIE}={minted('bob', age=50)}"}
    )
    assert identity_of(resp) == Identity("bob")
    assert "set-cookie" not in client_headers(resp)


@pytest.mark.parametrize("age", [61, 250])
async def test_out_of_date_roles_are_decided_again_keeping_the_expiry(age: float) -> None:
    servicer = make_servicer(admin_users=("bob",), user_groups={"bob": ["gpu"]})
    old = minted("bob", frozenset({"cpu"}), age=age)
    resp = await check(servicer, "GET", "/api/v1/options", {"cookie": f"{COOKIE}={old}"})
    assert identity_of(resp) == Identity("bob", frozenset({"gpu"}), admin=True)
    fresh = decoded(resp)
    assert (fresh.groups, fresh.admin) == (frozenset({"gpu"}), True)
    assert abs(fresh.decided - time.time()) < 5
    # A refresh is not a login: the session still ends when the first cookie would.
    before = SessionCookies(COOKIE_KEY, COOKIE, 300).decode(old)
    assert before is not None and fresh.expires == before.expires
    # ... and the new cookie is current: no refresh on the next request.
    again = await check(
        servicer, "GET", "/api/v1/options", {"cookie": f"{COOKIE}={session_cookie(resp)}"}
    )
    assert identity_of(again).admin and "set-cookie" not in client_headers(again)


async def test_lost_rights_are_lost_at_refresh() -> None:
    servicer = make_servicer(roles_refresh_seconds=5)
    old = minted("ada", frozenset({"ops"}), admin=True, age=6)
    resp = await check(servicer, "GET", "/api/v1/options", {"cookie": f"{COOKIE}={old}"})
    assert identity_of(resp) == Identity("ada")


async def test_cookie_without_decision_time_counts_as_out_of_date() -> None:
    """Cookies minted before they recorded when their roles were decided."""
    payload = json.dumps(
        {"u": "bob", "g": [], "a": True, "e": int(time.time()) + 200}, separators=(",", ":")
    ).encode()
    cookies = SessionCookies(COOKIE_KEY, COOKIE, 300)
    value = ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (payload, cookies._mac(payload))
    )
    session = cookies.decode(value)
    assert session is not None and session.decided == 0
    assert not cookies.roles_current(session)
    resp = await check(make_servicer(), "GET", "/api/v1/options", {"cookie": f"{COOKIE}={value}"})
    assert identity_of(resp) == Identity("bob")  # the flag it carried is not taken


def test_roles_current_bounds() -> None:
    cookies = SessionCookies(COOKIE_KEY, COOKIE, 300, roles_refresh_seconds=10)
    now = 1_000_000.0
    session = cookies.decode(cookies.encode("a", frozenset(), False, now=now), now=now)
    assert session is not None
    assert cookies.roles_current(session, now=now + 9.5)
    assert not cookies.roles_current(session, now=now + 10)
    assert not cookies.roles_current(session, now=now - 2)  # decided "in the future"


class CredentialsOnly(Authenticator):
    """An authenticator that cannot tell a user's roles without their credentials."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.refreshed: list[str] = []

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        return AuthResult("bob", frozenset({"new"})) if "authorization" in headers else None

    async def refresh(self, user: str) -> AuthResult | None:
        self.refreshed.append(user)
        if self.fail:
            raise AuthenticatorError("directory down", status_code=503)
        return None


@pytest.mark.parametrize("fail", [False, True])
async def test_out_of_date_roles_need_credentials_when_the_authenticator_cannot_tell(
    fail: bool,
) -> None:
    authenticator = CredentialsOnly(fail)
    servicer = make_servicer(authenticator=authenticator)
    cookie = {"cookie": f"{COOKIE}={minted('bob', frozenset({'old'}), age=61)}"}
    assert_denied(await check(servicer, "GET", "/api/v1/options", cookie))
    assert authenticator.refreshed == ["bob"]
    # The client's retry carries its credentials: a new login, with a new cookie.
    resp = await check(servicer, "GET", "/api/v1/options", {**cookie, "authorization": "X y"})
    assert identity_of(resp) == Identity("bob", frozenset({"new"}))
    assert decoded(resp).groups == frozenset({"new"})


# -- gRPC --------------------------------------------------------------------------------------

GRPC_PATH = "/flotilla.registry.v1.RegistryService/ListClusters"


async def test_grpc_metadata_credentials() -> None:
    headers = {
        "content-type": "application/grpc",
        "te": "trailers",
        "authorization": basic("alice", "secret"),
        IDENTITY_HEADER: "forged",
    }
    resp = await check(make_servicer(), "POST", GRPC_PATH, headers)
    assert identity_of(resp).user == "alice"


async def test_grpc_without_credentials_is_denied() -> None:
    resp = await check(make_servicer(), "POST", GRPC_PATH, {"content-type": "application/grpc"})
    assert_denied(resp)
    assert resp.status.code == code_pb2.UNAUTHENTICATED


# -- the authenticator seam --------------------------------------------------------------------


class NegotiateLike(Authenticator):
    """Stands in for Kerberos: a challenge of its own and a header on success."""

    challenge = "Negotiate"

    def __init__(self, behaviour: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behaviour = behaviour

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        if self.behaviour == "crash":
            raise RuntimeError("bug")
        if self.behaviour == "upstream":
            raise AuthenticatorError("Upstream failure verifying token", status_code=502)
        if headers.get("authorization") != "Negotiate good":
            return None
        return AuthResult(
            user="carol",
            groups=frozenset({"g"}),
            admin=True,
            response_headers=(("WWW-Authenticate", "Negotiate server-token"),),
        )


async def test_authenticator_response_headers_and_admin() -> None:
    servicer = make_servicer(authenticator=NegotiateLike("ok"))
    resp = await check(servicer, "GET", "/api/v1/options", {"authorization": "Negotiate good"})
    assert identity_of(resp) == Identity("carol", frozenset({"g"}), admin=True)
    headers = client_headers(resp)
    assert headers["www-authenticate"] == "Negotiate server-token"
    assert headers["set-cookie"].startswith(f"{COOKIE}=")
    assert_denied(
        await check(servicer, "GET", "/api/v1/options", {"authorization": "Negotiate bad"}),
        challenge="Negotiate",
    )


async def test_authenticator_crash_is_401() -> None:
    resp = await check(
        make_servicer(authenticator=NegotiateLike("crash")), "GET", "/api/v1/options"
    )
    assert_denied(resp, challenge="Negotiate")


async def test_authenticator_error_keeps_its_status() -> None:
    resp = await check(
        make_servicer(authenticator=NegotiateLike("upstream")), "GET", "/api/v1/options"
    )
    assert_denied(resp, challenge="", error="Upstream failure verifying token", status=502)


# -- the web page: its sign-in, and state changes a session cookie alone authorizes ----


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"sec-fetch-site": "cross-site", "content-type": "application/json"}, "Cross-site"),
        ({"sec-fetch-site": "same-site", "content-type": "application/json"}, "Cross-site"),
        ({"content-type": "text/plain"}, "Content-Type text/plain refused"),
        ({"content-type": "application/x-www-form-urlencoded"}, "Content-Type application/x-"),
        ({}, "Content-Type none refused"),
        ({"sec-fetch-site": "same-origin", "content-type": "application/json"}, ""),
        ({"content-type": "application/grpc+proto"}, ""),
    ],
)
async def test_cookie_state_changes_refuse_what_another_site_could_send(
    headers: dict[str, str], refused: str
) -> None:
    servicer = make_servicer()
    first = await check(
        servicer, "GET", "/api/v1/clusters/", {"authorization": basic("alice", "secret")}
    )
    cookie = {"cookie": f"{COOKIE}={session_cookie(first)}"}
    resp = await check(servicer, "POST", "/api/v1/clusters/", {**cookie, **headers})
    if not refused:
        assert identity_of(resp).user == "alice"
        return
    assert resp.denied_response.status.code == 403
    assert json.loads(resp.denied_response.body)["error"].startswith(refused)
    # Reading is always fine, and so is a method no other site can send unasked.
    assert identity_of(await check(servicer, "GET", "/api/v1/clusters/", {**cookie, **headers}))
    delete = await check(servicer, "DELETE", "/api/v1/clusters/c1", {**cookie, **headers})
    if "sec-fetch-site" not in headers:
        assert identity_of(delete).user == "alice"
    # With credentials of its own, a request is no cookie-only request.
    with_auth = {**cookie, **headers, "authorization": basic("alice", "secret")}
    assert identity_of(await check(servicer, "POST", "/api/v1/clusters/", with_auth))


async def test_the_web_page_gets_a_sign_in_method_and_no_basic_challenge() -> None:
    servicer = make_servicer()
    resp = await check(servicer, "GET", "/api/v1/login", {"x-flotilla-web": "1"})
    assert resp.denied_response.status.code == 401
    assert "www-authenticate" not in client_headers(resp)  # no browser dialog
    body = json.loads(resp.denied_response.body)
    assert body == {
        "error": "Authentication required",
        "login": {"kind": "form", "url": "", "label": "Sign in"},
    }
    wrong = await check(
        servicer,
        "GET",
        "/api/v1/login",
        {"x-flotilla-web": "1", "authorization": basic("alice", "wrong")},
    )
    assert json.loads(wrong.denied_response.body)["login"]["kind"] == "form"
    # Other clients keep the challenge and the body dask-gateway's client expects.
    assert_denied(await check(servicer, "GET", "/api/v1/login"))


class _Negotiating(Authenticator):
    challenge = "Negotiate"

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        return None


async def test_kerberos_keeps_its_challenge_for_the_browser_to_answer() -> None:
    servicer = make_servicer(authenticator=_Negotiating())
    resp = await check(servicer, "GET", "/api/v1/login", {"x-flotilla-web": "1"})
    assert client_headers(resp)["www-authenticate"] == "Negotiate"
    login = json.loads(resp.denied_response.body)["login"]
    assert login == {"kind": "negotiate", "url": "", "label": "Sign in with Kerberos"}


class _Redirecting(Authenticator):
    """Signs browsers in through a pretend identity provider at /api/v1/login/idp."""

    challenge = "idp"

    def __init__(self, failure: Exception | None = None) -> None:
        super().__init__()
        self.failure = failure
        self.seen: list[SignInRequest] = []

    async def sign_in(self, request: SignInRequest) -> SignInStep | None:
        self.seen.append(request)
        if self.failure is not None:
            raise self.failure
        if request.route == "/api/v1/login/idp":
            return SignInStep("https://idp.example/authorize", set_cookies=("s=1; Path=/x",))
        if request.route == "/api/v1/login/idp/back":
            user = AuthResult(request.query["user"], frozenset({"ops"}))
            return SignInStep("/", result=user, set_cookies=("s=; Max-Age=0",))
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        return None


def redirect_of(resp: external_auth_pb2.CheckResponse) -> tuple[str, list[str]]:
    assert resp.denied_response.status.code == 302, resp
    assert resp.denied_response.body == ""
    options = resp.denied_response.headers
    (location,) = [o.header.value for o in options if o.header.key == "location"]
    cookies = [o for o in options if o.header.key == "set-cookie"]
    # Envoy must send every cookie, not only the last.
    assert all(o.append_action != OVERWRITE for o in cookies)
    return location, [o.header.value for o in cookies]


async def test_an_authenticators_sign_in_steps_are_redirects() -> None:
    idp = _Redirecting()
    servicer = make_servicer(authenticator=idp, admin_groups=("ops",))
    # Asked before any credential is looked at.
    resp = await check(servicer, "GET", "/api/v1/login/idp", {"authorization": "idp x"})
    assert redirect_of(resp) == ("https://idp.example/authorize", ["s=1; Path=/x"])
    assert client_headers(resp)["cache-control"] == "no-store"

    resp = await check(
        servicer, "GET", "/api/v1/login/idp/back?user=alice&x=%2F", {"cookie": "s=1"}
    )
    assert idp.seen[-1].query == {"user": "alice", "x": "/"}
    assert idp.seen[-1].headers == {"cookie": "s=1"}
    location, (cleared, session) = redirect_of(resp)
    assert (location, cleared) == ("/", "s=; Max-Age=0")
    cookie = {"cookie": session.split(";", 1)[0]}
    # The session cookie has the roles decided like any login's (admin_groups).
    assert identity_of(await check(servicer, "GET", "/api/v1/clusters/", cookie)) == Identity(
        "alice", groups=frozenset({"ops"}), admin=True
    )

    # Not the authenticator's path: 404, as for a path nobody serves.
    resp = await check(servicer, "GET", "/api/v1/login/other")
    assert resp.denied_response.status.code == 404
    assert json.loads(resp.denied_response.body) == {"error": "Not Found"}
    # Only GETs are sign-in steps; /api/v1/login itself is the page's "who am I".
    seen = len(idp.seen)
    await check(servicer, "POST", "/api/v1/login/idp")
    await check(servicer, "GET", "/api/v1/login")
    assert len(idp.seen) == seen


@pytest.mark.parametrize(
    ("failure", "status", "error"),
    [
        (AuthenticatorError("bad state", status_code=403), 403, "bad state"),
        (AuthenticatorError("the provider is down", status_code=503), 503, "the provider is down"),
        (RuntimeError("a bug"), 401, "Sign-in failed"),
    ],
)
async def test_a_failed_sign_in_step_is_a_json_error(
    failure: Exception, status: int, error: str
) -> None:
    servicer = make_servicer(authenticator=_Redirecting(failure))
    resp = await check(servicer, "GET", "/api/v1/login/idp/back?user=alice")
    assert resp.denied_response.status.code == status
    assert json.loads(resp.denied_response.body) == {"error": error}
    assert client_headers(resp)["content-type"] == "application/json"
