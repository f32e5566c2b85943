"""JupyterHub token login against a real hub, through the auth service's Check."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from urllib.parse import parse_qs, urlsplit

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from flotilla_auth.authenticator import AuthenticatorConfigError, load_authenticator
from flotilla_auth.checker import Checker
from flotilla_auth.jupyterhub import CALLBACK_PATH, LOGIN_PATH, JupyterHubAuthenticator
from flotilla_auth.servicer import AuthorizationServicer
from flotilla_common.identity import IDENTITY_HEADER, Identity, verify_identity
from flotilla_common.sessions import SessionCookies
from google.rpc import code_pb2
from jupyterhub_hub import JupyterHub, jupyterhub_hub
from traitlets.config import Config

pytestmark = pytest.mark.integration

IDENTITY_KEY = "identity-key-for-tests"
COOKIE = "flotilla-session"


@pytest.fixture(scope="module")
def hub() -> Iterator[JupyterHub]:
    with jupyterhub_hub() as running:
        running.create_user("alice", groups=("dask-users",))
        running.create_user("bob", groups=("dask-users", "gateway-admins"))
        running.create_user("carol", admin=True)
        yield running


def make_authenticator(api_url: str, **traits: object) -> JupyterHubAuthenticator:
    config = Config()
    config.JupyterHubAuthenticator.jupyterhub_api_url = api_url
    for name, value in traits.items():
        setattr(config.JupyterHubAuthenticator, name, value)
    made = load_authenticator("jupyterhub", config)
    assert isinstance(made, JupyterHubAuthenticator)
    return made


@pytest.fixture
async def auth(hub: JupyterHub) -> AsyncIterator[JupyterHubAuthenticator]:
    made = make_authenticator(hub.api_url, jupyterhub_api_token=hub.service_token)
    yield made
    await made.close()


def servicer(auth: JupyterHubAuthenticator) -> AuthorizationServicer:
    class NoTokens:
        async def verify(self, cluster: str, token: str) -> str | None:
            return None

    return AuthorizationServicer(
        Checker(
            authenticator=auth,
            token_verifier=NoTokens(),
            cookies=SessionCookies("cookie-key-for-tests", COOKIE, 300),
            identity_key=IDENTITY_KEY,
            admin_groups=["gateway-admins"],
        )
    )


async def check(
    svc: AuthorizationServicer, headers: Mapping[str, str], path: str = "/api/v1/clusters/"
) -> external_auth_pb2.CheckResponse:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET", path=path, headers=dict(headers)
    )
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )
    return await svc.Check(request, None)


def identity_of(resp: external_auth_pb2.CheckResponse) -> Identity:
    assert resp.status.code == code_pb2.OK, resp
    headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
    return verify_identity(headers[IDENTITY_HEADER], IDENTITY_KEY)


def denial(resp: external_auth_pb2.CheckResponse) -> tuple[int, dict[str, str], dict[str, str]]:
    """``(HTTP status, JSON body, response headers)`` of a denial."""
    assert resp.HasField("denied_response"), resp
    denied = resp.denied_response
    headers = {o.header.key.lower(): o.header.value for o in denied.headers}
    return denied.status.code, json.loads(denied.body), headers


def redirect(resp: external_auth_pb2.CheckResponse) -> tuple[str, list[str]]:
    """``(Location, Set-Cookie values)`` of a redirect (ext_authz's own answer)."""
    assert resp.HasField("denied_response"), resp
    denied = resp.denied_response
    assert denied.status.code == 302, denied
    assert denied.body == ""
    headers = [(o.header.key.lower(), o.header.value) for o in denied.headers]
    (location,) = [v for k, v in headers if k == "location"]
    return location, [v for k, v in headers if k == "set-cookie"]


def cookie_pair(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


async def test_user_token_gives_name_and_groups(
    hub: JupyterHub, auth: JupyterHubAuthenticator
) -> None:
    svc = servicer(auth)
    resp = await check(svc, {"authorization": f"jupyterhub {hub.user_token('alice')}"})
    assert identity_of(resp) == Identity("alice", groups=frozenset({"dask-users"}))
    cookies = [
        o.header.value
        for o in resp.ok_response.response_headers_to_add
        if o.header.key.lower() == "set-cookie"
    ]
    assert len(cookies) == 1 and cookies[0].startswith(f"{COOKIE}=")
    # The cookie carries the identity: the hub is not asked again (it is not even needed).
    resp = await check(svc, {"cookie": cookies[0].split(";", 1)[0]})
    assert identity_of(resp).user == "alice"


async def test_admins_from_hub_flag_and_admin_groups(
    hub: JupyterHub, auth: JupyterHubAuthenticator
) -> None:
    svc = servicer(auth)
    bob = identity_of(await check(svc, {"authorization": f"jupyterhub {hub.user_token('bob')}"}))
    assert bob.admin and bob.groups == frozenset({"dask-users", "gateway-admins"})
    carol = identity_of(
        await check(svc, {"authorization": f"jupyterhub {hub.user_token('carol')}"})
    )
    assert carol.admin and carol.groups == frozenset()
    alice = identity_of(
        await check(svc, {"authorization": f"jupyterhub {hub.user_token('alice')}"})
    )
    assert not alice.admin


@pytest.mark.parametrize(
    "header",
    ["jupyterhub not-a-token", "token {alice}", "Basic YWxpY2U6eA==", "jupyterhub {service}"],
)
async def test_bad_credentials_get_401(
    hub: JupyterHub, auth: JupyterHubAuthenticator, header: str
) -> None:
    value = header.format(alice=hub.user_token("alice"), service=hub.service_token)
    status, body, headers = denial(await check(servicer(auth), {"authorization": value}))
    assert status == 401
    assert body == {"error": "Authentication required"}
    assert headers["www-authenticate"] == "jupyterhub"


async def test_revoked_token_gets_401(hub: JupyterHub, auth: JupyterHubAuthenticator) -> None:
    token = hub.user_token("alice")
    svc = servicer(auth)
    assert identity_of(await check(svc, {"authorization": f"jupyterhub {token}"})).user == "alice"
    model = hub.api("GET", "/user", token=token)
    hub.api("DELETE", f"/users/alice/tokens/{model['token_id']}")
    status, _, _ = denial(await check(svc, {"authorization": f"jupyterhub {token}"}))
    assert status == 401


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("bob", Identity("bob", groups=frozenset({"dask-users", "gateway-admins"}), admin=True)),
        ("carol", Identity("carol", admin=True)),
    ],
)
async def test_a_notebook_servers_token_gives_the_roles(
    hub: JupyterHub, user: str, expected: Identity
) -> None:
    # A notebook server's JUPYTERHUB_API_TOKEN has only the hub's "server" role (posting
    # activity), yet the hub tells its owner their groups and admin flag; the gateway's
    # own token is not needed for that.
    token = hub.user_token(user, scopes=[f"users:activity!user={user}"])
    without = make_authenticator(hub.api_url, jupyterhub_api_token="")
    try:
        got = identity_of(await check(servicer(without), {"authorization": f"jupyterhub {token}"}))
    finally:
        await without.close()
    assert got == expected


async def test_refresh_asks_the_hub_with_the_service_token(
    hub: JupyterHub, auth: JupyterHubAuthenticator
) -> None:
    hub.create_user("dave")
    before = await auth.refresh("dave")
    assert before is not None and before.groups == frozenset()
    hub.api("POST", "/groups/dask-users/users", {"users": ["dave"]})
    after = await auth.refresh("dave")
    assert after is not None and after.groups == frozenset({"dask-users"})
    assert await auth.refresh("nobody-here") is None
    without = make_authenticator(hub.api_url, jupyterhub_api_token="")
    try:
        assert await without.refresh("dave") is None
    finally:
        await without.close()


async def test_stopped_hub_gets_503_json() -> None:
    with jupyterhub_hub() as own:
        own.create_user("erin")
        token = own.user_token("erin")
        made = make_authenticator(own.api_url)
        svc = servicer(made)
        try:
            assert identity_of(await check(svc, {"authorization": f"jupyterhub {token}"})).user
            own.stop()
            status, body, _ = denial(await check(svc, {"authorization": f"jupyterhub {token}"}))
        finally:
            await made.close()
    assert status == 503
    assert body == {"error": "JupyterHub is unavailable"}


def test_api_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    with pytest.raises(AuthenticatorConfigError, match="jupyterhub_api_url"):
        load_authenticator("jupyterhub", Config())


def test_token_and_url_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://hub.invalid:8081/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "from-env")
    made = load_authenticator("jupyterhub", Config())
    assert isinstance(made, JupyterHubAuthenticator)
    assert made.jupyterhub_api_token == "from-env"
    assert made.jupyterhub_api_url == "http://hub.invalid:8081/hub/api"


def test_server_stopped_grace_needs_the_service_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    config = Config()
    config.JupyterHubAuthenticator.jupyterhub_api_url = "http://hub.invalid/hub/api"
    config.JupyterHubAuthenticator.server_stopped_grace = 3600.0
    with pytest.raises(AuthenticatorConfigError, match="server_stopped_grace"):
        load_authenticator("jupyterhub", config)
    config.JupyterHubAuthenticator.jupyterhub_api_token = "service-token"
    made = load_authenticator("jupyterhub", config)
    assert made.owner_check_period_seconds == 60.0
    config.JupyterHubAuthenticator.server_stopped_grace = 0.0
    assert load_authenticator("jupyterhub", config).owner_check_period_seconds is None


def oauth_authenticator(hub: JupyterHub, **traits: object) -> JupyterHubAuthenticator:
    return make_authenticator(
        hub.api_url,
        jupyterhub_api_token=hub.service_token,
        jupyterhub_url=hub.url,
        oauth_redirect_url=hub.oauth_redirect_uri,
        **traits,
    )


async def start_sign_in(svc: AuthorizationServicer) -> tuple[str, str]:
    """The hub's authorize URL and the state cookie (``name=value``) of a new sign-in."""
    location, cookies = redirect(await check(svc, {}, LOGIN_PATH))
    (state,) = cookies
    assert "HttpOnly" in state and "SameSite=Lax" in state and "Max-Age=600" in state
    assert f"Path={LOGIN_PATH}" in state
    return location, cookie_pair(state)


def callback_path(back: str) -> str:
    """The path and query the hub's redirect ``back`` to the gateway asks for."""
    parts = urlsplit(back)
    return f"{parts.path}?{parts.query}"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("alice", Identity("alice", groups=frozenset({"dask-users"}))),
        ("bob", Identity("bob", groups=frozenset({"dask-users", "gateway-admins"}), admin=True)),
        ("carol", Identity("carol", admin=True)),
    ],
)
async def test_a_browser_signs_in_through_the_hubs_oauth(
    hub: JupyterHub, user: str, expected: Identity
) -> None:
    auth = oauth_authenticator(hub)
    svc = servicer(auth)
    try:
        _, body, _ = denial(await check(svc, {"x-flotilla-web": "1"}))
        assert body["login"] == {
            "kind": "redirect",
            "url": "/api/v1/login/jupyterhub",
            "label": "Sign in with JupyterHub",
        }

        authorize, state = await start_sign_in(svc)
        parts = urlsplit(authorize)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
            f"{hub.url}/hub/api/oauth2/authorize"
        )
        query = parse_qs(parts.query)
        assert query["client_id"] == ["service-dask-gateway"]
        assert query["redirect_uri"] == [hub.oauth_redirect_uri]
        assert query["response_type"] == ["code"]
        assert query["state"] == [state.split("=", 1)[1]]

        back = hub.authorize(authorize, user)
        assert back.startswith(hub.oauth_redirect_uri + "?")
        location, cookies = redirect(await check(svc, {"cookie": state}, callback_path(back)))
        assert location == "/"
        cleared, session = cookies
        assert cleared.startswith("flotilla-jupyterhub-state=;") and "Max-Age=0" in cleared
        assert session.startswith(f"{COOKIE}=") and "HttpOnly" in session

        # The session cookie is the page's, with the roles decided as for a token login.
        assert identity_of(await check(svc, {"cookie": cookie_pair(session)})) == expected
    finally:
        await auth.close()


async def test_a_callback_of_another_sign_in_is_refused(hub: JupyterHub) -> None:
    auth = oauth_authenticator(hub)
    svc = servicer(auth)
    try:
        authorize, state = await start_sign_in(svc)
        back = hub.authorize(authorize, "alice")
        _, other = await start_sign_in(svc)
        for cookie in ({"cookie": other}, {}):
            status, body, _ = denial(await check(svc, cookie, callback_path(back)))
            assert status == 403
            assert "not started from this browser" in body["error"]
        # Its own state still works: nothing was spent by the refusals.
        location, _ = redirect(await check(svc, {"cookie": state}, callback_path(back)))
        assert location == "/"
    finally:
        await auth.close()


async def test_a_code_the_hub_refuses_gets_403(hub: JupyterHub) -> None:
    auth = oauth_authenticator(hub)
    svc = servicer(auth)
    try:
        authorize, state = await start_sign_in(svc)
        back = hub.authorize(authorize, "alice")
        value = state.split("=", 1)[1]
        bad = f"{CALLBACK_PATH}?code=not-a-code&state={value}"
        status, body, _ = denial(await check(svc, {"cookie": state}, bad))
        assert status == 403
        assert body == {
            "error": "JupyterHub refused the sign-in (the code is wrong, used or expired). "
            "Start again from the gateway's page."
        }
        # A code is good once.
        redirect(await check(svc, {"cookie": state}, callback_path(back)))
        status, _, _ = denial(await check(svc, {"cookie": state}, callback_path(back)))
        assert status == 403
        # The hub's own refusal (the user said no) comes back as an error, not a code.
        denied = f"{CALLBACK_PATH}?error=access_denied&state={value}"
        status, body, _ = denial(await check(svc, {"cookie": state}, denied))
        assert (status, body) == (403, {"error": "JupyterHub did not sign you in (access_denied)"})
        echoed = f"{CALLBACK_PATH}?error=%3Cb%3Ecall+us%3C%2Fb%3E&state={value}"
        status, body, _ = denial(await check(svc, {"cookie": state}, echoed))
        assert (status, body) == (403, {"error": "JupyterHub did not sign you in (error)"})
    finally:
        await auth.close()


async def test_a_wrong_client_secret_is_refused_not_a_crash(hub: JupyterHub) -> None:
    auth = oauth_authenticator(hub)
    wrong = oauth_authenticator(hub)
    wrong.jupyterhub_api_token = "not-the-secret"
    try:
        authorize, state = await start_sign_in(servicer(auth))
        back = hub.authorize(authorize, "alice")
        status, _, _ = denial(await check(servicer(wrong), {"cookie": state}, callback_path(back)))
        assert status == 403
    finally:
        await auth.close()
        await wrong.close()


async def test_sign_in_with_the_hub_stopped_gets_503_json() -> None:
    with jupyterhub_hub() as own:
        own.create_user("erin")
        made = oauth_authenticator(own)
        svc = servicer(made)
        try:
            authorize, state = await start_sign_in(svc)
            back = own.authorize(authorize, "erin")
            own.stop()
            status, body, _ = denial(await check(svc, {"cookie": state}, callback_path(back)))
        finally:
            await made.close()
    assert (status, body) == (503, {"error": "JupyterHub is unavailable"})


async def test_no_browser_sign_in_without_the_service_token(hub: JupyterHub) -> None:
    auth = make_authenticator(hub.api_url, jupyterhub_api_token="")
    svc = servicer(auth)
    try:
        _, body, _ = denial(await check(svc, {"x-flotilla-web": "1"}))
        assert body["login"]["kind"] == "none"
        status, body, _ = denial(await check(svc, {}, LOGIN_PATH))
        assert status == 404 and "no sign-in with JupyterHub" in body["error"]
        status, _, _ = denial(await check(svc, {}, LOGIN_PATH + "/elsewhere"))
        assert status == 404
    finally:
        await auth.close()


def test_oauth_settings_default_from_the_api_url_and_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JUPYTERHUB_CLIENT_ID", raising=False)
    config = Config()
    config.JupyterHubAuthenticator.jupyterhub_api_url = "http://hub.internal:8081/base/hub/api/"
    config.Deployment.public_url = "https://dask.example.org"
    made = load_authenticator("jupyterhub", config)
    assert isinstance(made, JupyterHubAuthenticator)
    assert made.oauth_client_id == "service-dask-gateway"
    step = made._authorize()
    assert step.location.startswith("http://hub.internal:8081/base/hub/api/oauth2/authorize?")
    query = parse_qs(urlsplit(step.location).query)
    assert query["redirect_uri"] == ["https://dask.example.org/api/v1/login/jupyterhub/callback"]
    (state,) = step.set_cookies
    assert state.endswith("; Secure")  # the gateway is https


@pytest.mark.parametrize(
    ("traits", "named"),
    [
        ({"jupyterhub_url": "hub.example.org"}, "jupyterhub_url"),
        ({"oauth_redirect_url": "/api/v1/login/jupyterhub/callback"}, "oauth_redirect_url"),
    ],
)
def test_oauth_settings_errors_name_the_setting(traits: dict[str, str], named: str) -> None:
    config = Config()
    config.JupyterHubAuthenticator.jupyterhub_api_url = "http://hub:8081/hub/api"
    for name, value in traits.items():
        setattr(config.JupyterHubAuthenticator, name, value)
    with pytest.raises(AuthenticatorConfigError, match=rf"^c\.JupyterHubAuthenticator\.{named}: "):
        load_authenticator("jupyterhub", config)


async def test_no_browser_sign_in_without_the_hubs_browser_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An API URL the hub's own URL cannot be told from: tokens still work, the page
    # offers no sign-in, and the log says which setting is missing.
    made = make_authenticator("http://hub-api.internal/api", jupyterhub_api_token="token")
    try:
        assert made.browser_login().kind == "none"
        status, _, _ = denial(await check(servicer(made), {}, LOGIN_PATH))
        assert status == 404
    finally:
        await made.close()
    assert "c.JupyterHubAuthenticator.jupyterhub_url: not set" in caplog.text
