"""Session cookies: a configurable name, Max-Age twice the server's acceptance time, a
transparent re-authentication once it expires, and sessions that survive a restart of
the auth service (a redeploy must not log users out)."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from compat.harness import (
    ALICE,
    COOKIE_NAME,
    RESPONSE_ERROR,
    CompatGateway,
    raised,
    running_gateway,
    step,
)
from helpers import wait_for

pytestmark = pytest.mark.timeout(600)

SHORT_MAX_AGE = 3


def _session(headers: dict[str, str]) -> tuple[str, SimpleCookie]:
    """The session cookie a response set: (``name=value``, parsed cookie)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(headers["set-cookie"])
    morsel = cookie[COOKIE_NAME]
    return f"{COOKIE_NAME}={morsel.value}", cookie


def _with_cookie(compat: CompatGateway, cookie: str, path: str = "/api/v1/clusters/") -> Any:
    return compat.request("GET", path, None, None, {"Cookie": cookie})


def test_cookie_is_named_by_configuration(compat: CompatGateway) -> None:
    status, headers, _ = compat.request("GET", "/api/v1/clusters/", ALICE)
    assert status == 200
    _, cookie = _session(headers)
    morsel = cookie[COOKIE_NAME]
    assert morsel["max-age"] == "600"  # twice the 300 s the server accepts it for
    assert morsel["path"] == "/"
    assert morsel["httponly"] is True


def test_cookie_replaces_credentials(compat: CompatGateway) -> None:
    _, headers, _ = compat.request("GET", "/api/v1/clusters/", ALICE)
    cookie, _ = _session(headers)
    status, headers, body = _with_cookie(compat, cookie)
    assert status == 200 and isinstance(body, dict)
    # Only full authentication sets the cookie again.
    assert "set-cookie" not in headers
    # A cookie wins over credentials that would fail (as upstream: the cookie is checked
    # first), and a tampered cookie is no session.
    status, _, _ = compat.request(
        "GET", "/api/v1/clusters/", None, None, {"Cookie": cookie, **_basic(ALICE, "wrong")}
    )
    assert status == 200
    name, _, value = cookie.partition("=")
    tampered = f"{name}={value[:-2]}{'AA' if not value.endswith('AA') else 'BB'}"
    status, headers, body = _with_cookie(compat, tampered)
    assert (status, headers["www-authenticate"]) == (401, "Basic")
    # The old default name means nothing here.
    status, _, _ = _with_cookie(compat, f"flotilla-session={value}")
    assert status == 401


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_sessions_survive_an_auth_restart(compat: CompatGateway) -> None:
    _, headers, _ = compat.request("GET", "/api/v1/clusters/", ALICE)
    cookie, _ = _session(headers)
    stack = compat.stack
    [child] = [c for c in stack.children if c.name == "auth"]
    assert child.proc is not None
    old_pid = child.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    child.proc.wait(30)
    stack.check_children()  # what `make run`'s supervisor does every second
    assert stack.pid("auth") != old_pid
    # A session needs no auth round trip (the registry checks the cookie), so it serves
    # while auth is down; credentials wait for the new auth (Envoy fails closed with 503).
    wait_for(
        lambda: compat.request("GET", "/api/v1/clusters/", ALICE)[0] != 503, 60, "auth to be back"
    )
    status, headers, body = _with_cookie(compat, cookie)
    assert status == 200, body
    assert "set-cookie" not in headers


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompatGateway]:
    """A gateway whose sessions last seconds (store-independent: sqlite only)."""
    state_dir: Path = tmp_path_factory.mktemp("compat-short-sessions")
    extra = f"\nc.Auth.cookie_max_age_seconds = {SHORT_MAX_AGE}\n"
    with running_gateway(state_dir, "sqlite", extra=extra) as gateway:
        yield gateway


def test_expired_session_reauthenticates_transparently(short_sessions: CompatGateway) -> None:
    results = short_sessions.upstream(
        step("expiry", "cookie_expiry", ALICE, max_age_seconds=SHORT_MAX_AGE),
        {**step("wrong", "authenticate", ALICE), "password": "wrong"},
    )
    r = results["expiry"].value
    assert "value" in r["first"]
    assert r["cookie_names"] == [COOKIE_NAME]
    # Accepted until the server-side age, then 401 with the challenge to re-authenticate.
    assert r["statuses"] == [200, 401]
    assert SHORT_MAX_AGE - 1.5 <= r["expired_after_seconds"] <= SHORT_MAX_AGE + 3
    assert r["expired_challenge"] == "Basic"
    # The upstream client re-authenticates on the 401 without the user noticing.
    assert "value" in r["after_expiry"]
    exc_type, _, status = raised(results["wrong"].value)
    assert (exc_type, status) == (RESPONSE_ERROR, 401)


def test_short_max_age_is_announced(short_sessions: CompatGateway) -> None:
    _, headers, _ = short_sessions.request("GET", "/api/v1/options", ALICE)
    _, cookie = _session(headers)
    assert cookie[COOKIE_NAME]["max-age"] == str(2 * SHORT_MAX_AGE)
