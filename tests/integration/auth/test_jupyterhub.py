"""JupyterHub token login against a real hub, through the auth service's Check."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from flotilla_auth.authenticator import AuthenticatorConfigError, load_authenticator
from flotilla_auth.checker import Checker
from flotilla_auth.jupyterhub import JupyterHubAuthenticator
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
    svc: AuthorizationServicer, headers: Mapping[str, str]
) -> external_auth_pb2.CheckResponse:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET", path="/api/v1/clusters/", headers=dict(headers)
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
