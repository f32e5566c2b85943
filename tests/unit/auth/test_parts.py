"""Token cache, authenticator loading, cookie parsing and configuration defaults."""

from __future__ import annotations

import pytest
from flotilla_auth.authenticator import load_authenticator
from flotilla_auth.basic import BasicAuthenticator
from flotilla_auth.config import Auth
from flotilla_auth.tokens import CachingTokenVerifier
from flotilla_common.sessions import SessionCookies, read_cookie
from traitlets.config import Config


class CountingTokens:
    def __init__(self) -> None:
        self.valid = {("c1", "good"): "alice"}
        self.calls = 0

    async def verify(self, cluster: str, token: str) -> str | None:
        self.calls += 1
        return self.valid.get((cluster, token))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_keeps_positive_answers_until_ttl() -> None:
    inner, clock = CountingTokens(), Clock()
    cache = CachingTokenVerifier(inner, ttl_seconds=10, clock=clock)
    assert await cache.verify("c1", "good") == "alice"
    assert await cache.verify("c1", "good") == "alice"
    assert inner.calls == 1
    clock.now += 10.5
    assert await cache.verify("c1", "good") == "alice"
    assert inner.calls == 2


async def test_cache_never_keeps_rejections_or_other_clusters() -> None:
    inner = CountingTokens()
    cache = CachingTokenVerifier(inner, ttl_seconds=10, clock=Clock())
    assert await cache.verify("c1", "bad") is None
    assert await cache.verify("c1", "bad") is None
    assert await cache.verify("c2", "good") is None
    assert inner.calls == 3


async def test_cache_revocation_after_forget_and_disabled_cache() -> None:
    inner = CountingTokens()
    cache = CachingTokenVerifier(inner, ttl_seconds=10, clock=Clock())
    assert await cache.verify("c1", "good") == "alice"
    inner.valid.clear()
    cache.forget("c1")
    assert await cache.verify("c1", "good") is None

    inner = CountingTokens()
    uncached = CachingTokenVerifier(inner, ttl_seconds=0)
    await uncached.verify("c1", "good")
    await uncached.verify("c1", "good")
    assert inner.calls == 2


async def test_cache_is_bounded() -> None:
    inner = CountingTokens()
    inner.valid = {(f"c{i}", "t"): "u" for i in range(10)}
    cache = CachingTokenVerifier(inner, ttl_seconds=10, max_entries=3, clock=Clock())
    for i in range(10):
        assert await cache.verify(f"c{i}", "t") == "u"
    assert len(cache._entries) <= 3


def test_load_basic_by_entry_point_and_by_path() -> None:
    config = Config()
    config.BasicAuthenticator.password = "pw"
    config.BasicAuthenticator.user_groups = {"a": ["g"]}
    auth = load_authenticator("basic", config)
    assert isinstance(auth, BasicAuthenticator)
    assert auth.password == "pw"
    assert auth.user_groups == {"a": ["g"]}
    assert auth.challenge == "Basic"
    assert isinstance(
        load_authenticator("flotilla_auth.basic:BasicAuthenticator", config), BasicAuthenticator
    )


@pytest.mark.parametrize(
    "name", ["nope", "flotilla_auth.basic:Nope", "no.such.module:X", "os:path"]
)
def test_unknown_authenticator(name: str) -> None:
    with pytest.raises(ValueError):
        load_authenticator(name, Config())


def test_auth_defaults_and_overrides() -> None:
    auth = Auth(config=Config())
    assert auth.authenticator_class == "basic"
    assert auth.cookie_name == "flotilla-session"
    assert auth.cookie_max_age_seconds == 300
    assert auth.roles_refresh_seconds == 60
    assert auth.admin_users == [] and auth.admin_groups == []
    config = Config()
    config.Auth.cookie_name = "s"
    config.Auth.admin_groups = ["ops"]
    assert Auth(config=config).cookie_name == "s"
    assert Auth(config=config).admin_groups == ["ops"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("s=v", "v"),
        ("a=1; s=v; b=2", "v"),
        ('s="v"', "v"),
        ("a=1;s=v", "v"),
        ("ss=v", None),
        ("s", None),
        ("", None),
        (";;;", None),
    ],
)
def test_read_cookie(header: str, expected: str | None) -> None:
    assert read_cookie(header, "s") == expected


def test_set_cookie_attributes() -> None:
    assert SessionCookies("k", "s", 60).set_cookie("v") == (
        "s=v; Max-Age=120; Path=/; HttpOnly; SameSite=Lax"
    )
    assert SessionCookies("k", "s", 60, secure=True).set_cookie("v").endswith("; Secure")


def test_cookie_value_is_cookie_safe() -> None:
    value = SessionCookies("k", "s", 60).encode("José ;=,", frozenset({"a b"}), True)
    assert all(c.isalnum() or c in "-_." for c in value)
    session = SessionCookies("k", "s", 60).decode(value)
    assert session is not None and session.user == "José ;=,"
