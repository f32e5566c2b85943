"""The web page as HTTP sees it, through Envoy: its files and their security headers, the
sign-in seam, the event stream, and state changes a session cookie alone may make.
(tests/e2e/test_web_browser.py drives the page itself in Chromium.)"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway
from helpers import wait_for

WEB = {"x-flotilla-web": "1"}
ADMIN_CONFIG = 'c.Auth.admin_users = ["ada"]\n'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("web"), ADMIN_CONFIG) as gateway:
        yield gateway


def _request(
    stack: Stack, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(stack.address.split("//", 1)[1], timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        lower = {k.lower(): v for k, v in response.getheaders()}
        return response.status, lower, response.read()
    finally:
        connection.close()


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def _sign_in(stack: Stack, user: str) -> str:
    """The web page's sign-in: its session cookie."""
    status, headers, body = _request(
        stack, "GET", "/api/v1/login", {**WEB, "Authorization": _basic(user)}
    )
    assert status == 200, body
    assert json.loads(body)["user"] == user
    return headers["set-cookie"].split(";", 1)[0]


def _create(stack: Stack, cookie: str, **headers: str) -> str:
    """A cluster created with the page's session cookie (a JSON body, as the page sends)."""
    status, _, body = _request(
        stack,
        "POST",
        "/api/v1/clusters/",
        {"Cookie": cookie, "content-type": "application/json", **headers},
        body={"cluster_options": {}},
    )
    assert status == 201, body
    name: str = json.loads(body)["name"]
    return name


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")],
)
def test_the_page_and_its_files_are_served_with_a_strict_policy(
    stack: Stack, path: str, content_type: str
) -> None:
    status, headers, body = _request(stack, "GET", path)
    assert status == 200 and headers["content-type"].startswith(content_type)
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert body


def test_the_page_references_only_its_own_files(stack: Stack) -> None:
    _, _, body = _request(stack, "GET", "/")
    page = body.decode()
    assert 'src="/ui/app.js"' in page and 'href="/ui/style.css"' in page
    assert "http://" not in page and "https://" not in page  # no CDN
    assert "<script>" not in page and "style=" not in page  # nothing inline


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/..%2Fweb.py", "/ui/app.py", "/ui/"])
def test_nothing_else_is_served_from_there(stack: Stack, path: str) -> None:
    status, _, body = _request(stack, "GET", path)
    assert status == 404, body


def test_sign_in_for_the_page_has_no_browser_dialog_and_says_how(stack: Stack) -> None:
    status, headers, body = _request(stack, "GET", "/api/v1/login", WEB)
    assert status == 401
    assert "www-authenticate" not in headers
    assert json.loads(body)["login"] == {"kind": "form", "url": "", "label": "Sign in"}
    # Clients other than the page get the challenge dask-gateway's client expects.
    status, headers, _ = _request(stack, "GET", "/api/v1/login")
    assert (status, headers["www-authenticate"]) == (401, "Basic")

    cookie = _sign_in(stack, "mia")
    status, _, body = _request(stack, "GET", "/api/v1/login", {**WEB, "Cookie": cookie})
    assert status == 200 and json.loads(body) == {"user": "mia", "groups": [], "admin": False}
    # A session that is no longer valid is a 401 the page can act on, without a dialog.
    status, headers, _ = _request(
        stack, "GET", "/api/v1/clusters/", {**WEB, "Cookie": "flotilla-session=x"}
    )
    assert status == 401 and "www-authenticate" not in headers


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"content-type": "text/plain"}, "Content-Type text/plain refused"),
        ({"content-type": "application/x-www-form-urlencoded"}, "Content-Type application/x"),
        ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, "Cross-site"),
    ],
)
def test_what_another_site_could_send_with_the_cookie_is_refused(
    stack: Stack, headers: dict[str, str], error: str
) -> None:
    cookie = _sign_in(stack, "mia")
    before = _request(stack, "GET", "/api/v1/clusters/", {"Cookie": cookie})[2]
    status, _, body = _request(
        stack, "POST", "/api/v1/clusters/", {"Cookie": cookie, **headers}, body={}
    )
    assert status == 403 and json.loads(body)["error"].startswith(error), body
    assert _request(stack, "GET", "/api/v1/clusters/", {"Cookie": cookie})[2] == before


def _events(stack: Stack, cookie: str, query: str = "") -> Iterator[list[dict[str, Any]]]:
    """The data of each ``clusters`` event of the stream."""
    connection = http.client.HTTPConnection(stack.address.split("//", 1)[1], timeout=30)
    connection.request("GET", f"/api/v1/events{query}", headers={"Cookie": cookie})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("content-type", "").startswith("text/event-stream")
    try:
        while True:
            line = response.fp.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                yield json.loads(line[5:])
    finally:
        connection.close()


def test_the_event_stream_follows_a_cluster_and_never_shows_its_key(stack: Stack) -> None:
    cookie = _sign_in(stack, "mia")
    events = _events(stack, cookie)
    assert next(events) == []  # mia has no clusters yet
    name = _create(stack, cookie, **{"sec-fetch-site": "same-origin"})
    seen: list[str] = []
    deadline = time.monotonic() + 60
    for batch in events:
        for c in batch:
            assert c["name"] == name and c["owner"] == "mia"
            assert "tls_key" not in c and "token" not in c
            seen.append(c["status"])
        if "RUNNING" in seen or time.monotonic() > deadline:
            break
    assert seen[0] == "PENDING" and seen[-1] == "RUNNING", seen
    status, _, _ = _request(stack, "DELETE", f"/api/v1/clusters/{name}", {"Cookie": cookie})
    assert status == 204
    for batch in events:
        if any(c["status"] == "STOPPED" for c in batch):
            break


def test_only_admins_stream_every_users_clusters(stack: Stack) -> None:
    status, _, body = _request(
        stack, "GET", "/api/v1/events?all_users=1", {"Cookie": _sign_in(stack, "mia")}
    )
    assert status == 403, body
    mine = _sign_in(stack, "mia")
    name = _create(stack, mine)
    events = _events(stack, _sign_in(stack, "ada"), "?all_users=1")
    first = next(events)
    assert name in {c["name"] for c in first}
    assert {c["owner"] for c in first if c["name"] == name} == {"mia"}
    _request(stack, "DELETE", f"/api/v1/clusters/{name}", {"Cookie": mine})
    wait_for(
        lambda: (
            name not in json.loads(_request(stack, "GET", "/api/v1/clusters/", {"Cookie": mine})[2])
        ),
        60,
        f"{name} to stop",
    )


def test_sign_out_clears_the_cookie(stack: Stack) -> None:
    cookie = _sign_in(stack, "mia")
    status, headers, _ = _request(
        stack,
        "POST",
        "/api/v1/logout",
        {"Cookie": cookie, "content-type": "application/json"},
        body={},
    )
    assert status == 204
    cleared = headers["set-cookie"]
    assert cleared.startswith("flotilla-session=") and "Max-Age=0" in cleared
