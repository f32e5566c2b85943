"""Kerberos (SPNEGO) login against a real KDC, through the auth service's Check."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path

import gssapi
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from flotilla_auth.authenticator import AuthenticatorConfigError, load_authenticator
from flotilla_auth.checker import Checker
from flotilla_auth.kerberos import KerberosAuthenticator, map_principal, unix_groups
from flotilla_auth.servicer import AuthorizationServicer
from flotilla_common.identity import IDENTITY_HEADER, Identity, verify_identity
from flotilla_common.sessions import SessionCookies
from google.rpc import code_pb2
from krb5_realm import Krb5Realm
from traitlets.config import Config

pytestmark = pytest.mark.integration

IDENTITY_KEY = "identity-key-for-tests"
COOKIE = "flotilla-session"
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")


def authenticator(realm: Krb5Realm, **traits: object) -> KerberosAuthenticator:
    config = Config()
    config.KerberosAuthenticator.keytab = str(realm.keytab)
    for name, value in traits.items():
        setattr(config.KerberosAuthenticator, name, value)
    made = load_authenticator("kerberos", config)
    assert isinstance(made, KerberosAuthenticator)
    return made


def servicer(auth: KerberosAuthenticator) -> AuthorizationServicer:
    class NoTokens:
        async def verify(self, cluster: str, token: str) -> str | None:
            return None

    return AuthorizationServicer(
        Checker(
            authenticator=auth,
            token_verifier=NoTokens(),
            cookies=SessionCookies("cookie-key-for-tests", COOKIE, 300),
            identity_key=IDENTITY_KEY,
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


def client_headers(resp: external_auth_pb2.CheckResponse) -> dict[str, str]:
    options = (
        resp.ok_response.response_headers_to_add
        if resp.HasField("ok_response")
        else resp.denied_response.headers
    )
    return {o.header.key.lower(): o.header.value for o in options}


def identity_of(resp: external_auth_pb2.CheckResponse) -> Identity:
    assert resp.status.code == code_pb2.OK, resp
    headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
    return verify_identity(headers[IDENTITY_HEADER], IDENTITY_KEY)


def assert_challenged(resp: external_auth_pb2.CheckResponse) -> None:
    assert resp.status.code != code_pb2.OK
    assert resp.denied_response.status.code == 401
    assert client_headers(resp)["www-authenticate"] == "Negotiate"
    assert json.loads(resp.denied_response.body) == {"error": "Authentication required"}


def client_context(
    ccache: Path, target: str = "HTTP@localhost", mech: gssapi.OID = gssapi.MechType.kerberos
) -> tuple[gssapi.SecurityContext, str]:
    """A client context (mutual auth requested) and its ``Authorization`` header."""
    creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
    context = gssapi.SecurityContext(
        name=gssapi.Name(target, gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=mech,
        flags=gssapi.RequirementFlag.mutual_authentication,
    )
    token = context.step()
    assert token
    return context, "Negotiate " + base64.b64encode(token).decode()


@pytest.mark.parametrize("mech", [gssapi.MechType.kerberos, SPNEGO], ids=["krb5", "spnego"])
async def test_ticket_accepted_with_mutual_auth_reply(
    krb5_env: Krb5Realm, mech: gssapi.OID
) -> None:
    svc = servicer(authenticator(krb5_env))
    context, header = client_context(krb5_env.kinit("alice"), mech=mech)
    resp = await check(svc, {"authorization": header})
    assert identity_of(resp).user == "alice"
    headers = client_headers(resp)
    assert headers["set-cookie"].startswith(f"{COOKIE}=")
    scheme, _, reply = headers["www-authenticate"].partition(" ")
    assert scheme == "Negotiate" and reply
    assert not context.complete
    context.step(base64.b64decode(reply))  # the server proved it holds the service key
    assert context.complete


async def test_no_or_garbage_token_is_challenged(krb5_env: Krb5Realm) -> None:
    svc = servicer(authenticator(krb5_env))
    assert_challenged(await check(svc, {}))
    for value in (
        "Negotiate " + base64.b64encode(b"not a kerberos token at all").decode(),
        "Negotiate !!!not-base64!!!",
        "Negotiate " + base64.b64encode(os.urandom(600)).decode(),
        "Basic " + base64.b64encode(b"alice:pw").decode(),
    ):
        assert_challenged(await check(svc, {"authorization": value}))


async def test_replayed_token_is_refused(krb5_env: Krb5Realm) -> None:
    svc = servicer(authenticator(krb5_env))
    _context, header = client_context(krb5_env.kinit("bob"))
    assert identity_of(await check(svc, {"authorization": header})).user == "bob"
    assert_challenged(await check(svc, {"authorization": header}))


@pytest.mark.parametrize("target", ["HTTP@elsewhere.test", "host@localhost"])
async def test_ticket_for_another_service_is_refused(krb5_env: Krb5Realm, target: str) -> None:
    """A principal the keytab lacks, and one it holds that is not ``service_name``."""
    svc = servicer(authenticator(krb5_env))
    _context, header = client_context(krb5_env.kinit("alice"), target=target)
    assert_challenged(await check(svc, {"authorization": header}))


async def test_instance_principal_needs_a_rule(krb5_env: Krb5Realm) -> None:
    ccache = krb5_env.kinit("alice/admin")
    plain = servicer(authenticator(krb5_env))
    assert_challenged(await check(plain, {"authorization": client_context(ccache)[1]}))

    mapped = servicer(
        authenticator(
            krb5_env,
            principal_rules=[
                (r"bob@EXAMPLE\.TEST", ""),  # refused outright
                (r"(?P<name>[^/@]+)/admin@EXAMPLE\.TEST", r"\g<name>-admin"),
            ],
        )
    )
    resp = await check(mapped, {"authorization": client_context(ccache)[1]})
    assert identity_of(resp).user == "alice-admin"
    bob = client_context(krb5_env.kinit("bob"))[1]
    assert_challenged(await check(mapped, {"authorization": bob}))


def test_map_principal_defaults_and_rules() -> None:
    import re

    assert map_principal("alice@EXAMPLE.TEST", []) == "alice"
    assert map_principal("alice@OTHER.ORG", []) == "alice"
    assert map_principal("alice/admin@EXAMPLE.TEST", []) is None
    assert map_principal("HTTP/localhost@EXAMPLE.TEST", []) is None
    rules = [(re.compile(r"(.+)@OTHER\.ORG"), ""), (re.compile(r"(.+)/ops@.*"), r"\1")]
    assert map_principal("alice@OTHER.ORG", rules) is None
    assert map_principal("carol/ops@EXAMPLE.TEST", rules) == "carol"
    # A rule cannot produce a name with an instance or realm in it.
    assert map_principal("x/y@R", [(re.compile(".*"), "x/y")]) is None


async def test_groups_are_unix_groups_and_refresh(krb5_env: Krb5Realm) -> None:
    auth = authenticator(krb5_env)
    root = await auth.refresh("root")
    assert root is not None and root.user == "root"
    assert root.groups == unix_groups("root") and "root" in root.groups
    nobody = await auth.refresh("no-such-unix-user-xyz")
    assert nobody is not None and nobody.groups == frozenset()


def test_cache_max_age_overrides_cookie_age(krb5_env: Krb5Realm) -> None:
    assert authenticator(krb5_env).cookie_max_age_seconds is None
    assert authenticator(krb5_env, cache_max_age=42).cookie_max_age_seconds == 42


def test_missing_or_wrong_keytab_names_the_setting(krb5_env: Krb5Realm, tmp_path: Path) -> None:
    config = Config()
    config.KerberosAuthenticator.keytab = str(tmp_path / "missing.keytab")
    with pytest.raises(AuthenticatorConfigError) as missing:
        KerberosAuthenticator(config=config)
    message = str(missing.value)
    assert "c.KerberosAuthenticator.keytab" in message and "missing.keytab" in message
    assert "\n" not in message

    garbage = tmp_path / "garbage.keytab"
    garbage.write_bytes(b"this is not a keytab")
    config.KerberosAuthenticator.keytab = str(garbage)
    with pytest.raises(AuthenticatorConfigError, match=r"c\.KerberosAuthenticator\.keytab"):
        KerberosAuthenticator(config=config)

    # A real keytab without any key for the service.
    config.KerberosAuthenticator.keytab = str(krb5_env.directory / "foreign.keytab")
    config.KerberosAuthenticator.service_name = "postgres"
    with pytest.raises(AuthenticatorConfigError, match=r"c\.KerberosAuthenticator\.keytab"):
        KerberosAuthenticator(config=config)
