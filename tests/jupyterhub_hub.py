"""A private JupyterHub for tests: the hub and its configurable-http-proxy.

``make .cache/jupyterhub/.installed`` (a prerequisite of ``make test``) installs JupyterHub
into its own venv and the proxy from npm into the same directory. ``jupyterhub_hub()``
writes a configuration in a temporary directory (every port a free one on 127.0.0.1, the
dummy authenticator, a spawner whose "notebook servers" are no processes, two services
with API tokens), starts the hub, waits until its API
answers, and stops the hub and the proxy by PID when the block ends::

    with jupyterhub_hub() as hub:
        hub.create_user("alice", groups=["dask-users"])
        token = hub.user_token("alice")     # what JUPYTERHUB_API_TOKEN holds in a notebook
        hub.api_url                         # http://127.0.0.1:<port>/hub/api

Services, as a deployment registers the gateway:

* ``dask-gateway`` (``hub.service_token``): reads users, their groups and servers, and
  is an OAuth client (``service-dask-gateway``, no confirmation page) whose redirect URI
  (``hub.oauth_redirect_uri``) is the callback of a gateway on ``hub.gateway_port``;
* ``test-admin`` (the harness's own, a hub admin): creates users, admins and groups,
  mints user tokens.

Where the hub cannot run here it skips with a one-line reason, except with CI=true,
where it fails instead.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from helpers import free_ports, wait_for

__all__ = ["JupyterHub", "jupyterhub_hub"]

PROJECT = Path(__file__).resolve().parents[1]
VENV = PROJECT / ".cache" / "jupyterhub"
HUB = VENV / "bin" / "jupyterhub"
#: The gateway's OAuth callback (flotilla_auth.jupyterhub.CALLBACK_PATH).
OAUTH_CALLBACK_PATH = "/api/v1/login/jupyterhub/callback"
PROXY = VENV / "node_modules" / ".bin" / "configurable-http-proxy"

CONFIG = """\
from jupyterhub.spawner import Spawner

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = {proxy_pid_file!r}
c.JupyterHub.pid_file = {hub_pid_file!r}
c.JupyterHub.db_url = "sqlite:///" + {db!r}
c.JupyterHub.cookie_secret_file = {cookie_secret!r}
c.JupyterHub.authenticator_class = "dummy"


# A "notebook server" without a process: the hub's own port answers for it.
class NoProcessSpawner(Spawner):
    running = False

    async def start(self):
        self.running = True
        return ("127.0.0.1", {hub_port})

    async def stop(self, now=False):
        self.running = False

    async def poll(self):
        return None if self.running else 0


c.JupyterHub.spawner_class = NoProcessSpawner
c.Authenticator.allow_all = True
c.JupyterHub.services = [
    {{
        "name": "dask-gateway",
        "api_token": {service_token!r},
        # The web page's "Sign in with JupyterHub" (OAuth): the secret is the token.
        "oauth_client_id": "service-dask-gateway",
        "oauth_redirect_uri": {oauth_redirect_uri!r},
        "oauth_no_confirm": True,
    }},
    {{"name": "test-admin", "api_token": {admin_token!r}}},
]
c.JupyterHub.load_roles = [
    {{
        "name": "dask-gateway-role",
        "services": ["dask-gateway"],
        "scopes": ["read:users", "read:users:groups", "read:groups", "read:servers"],
    }},
    # Every user may sign in to the gateway through the hub (the OAuth authorize step).
    {{"name": "user", "scopes": ["self", "access:services!service=dask-gateway"]}},
    # Only a hub admin may make other admins.
    {{"name": "admin", "services": ["test-admin"]}},
]
"""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"JupyterHub unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"JupyterHub unavailable: {reason}")


class JupyterHub:
    """A running hub (see the module docstring)."""

    def __init__(self, directory: Path, hub_port: int, service_token: str, admin_token: str):
        self.directory = directory
        self.api_url = f"http://127.0.0.1:{hub_port}/hub/api"
        self.service_token = service_token
        self._admin_token = admin_token
        self.process: subprocess.Popen[bytes] | None = None
        #: Where browsers reach the hub (its proxy).
        self.url = ""
        #: A free port for a gateway's public listener, which the registered
        #: ``oauth_redirect_uri`` names (``running_gateway(..., public_port=...)``).
        self.gateway_port = 0
        self.oauth_redirect_uri = ""

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """Call the hub's API (as ``test-admin`` unless ``token``); the parsed answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"token {token or self._admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_user(self, name: str, *, admin: bool = False, groups: tuple[str, ...] = ()) -> None:
        """A hub user (``admin``: a hub admin), added to ``groups`` (created if missing)."""
        self.api("POST", f"/users/{name}", {"admin": admin})
        for group in groups:
            try:
                self.api("POST", f"/groups/{group}", {"users": [name]})
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # the group exists: add the user to it
                    raise
                self.api("POST", f"/groups/{group}/users", {"users": [name]})

    def user_token(self, name: str, scopes: list[str] | None = None) -> str:
        """A new API token of user ``name``: with ``scopes``, else those the hub gives."""
        body: dict[str, Any] = {"expires_in": 3600, "note": "tests"}
        if scopes is not None:
            body["scopes"] = scopes
        answer = self.api("POST", f"/users/{name}/tokens", body)
        token: str = answer["token"]
        return token

    def has_server(self, name: str) -> bool:
        """Whether the hub reports a ready server of user ``name``."""
        model = self.api("GET", f"/users/{name}")
        return bool(model.get("server")) and not model.get("pending")

    def start_server(self, name: str) -> None:
        """Start the user's (process-less) server and wait until the hub reports it."""
        self.api("POST", f"/users/{name}/server", {})
        wait_for(lambda: self.has_server(name), 30, f"the server of {name}")

    def stop_server(self, name: str) -> None:
        """Stop the user's server and wait until the hub reports it gone."""
        self.api("DELETE", f"/users/{name}/server")
        wait_for(lambda: not self.api("GET", f"/users/{name}").get("server"), 30, "server stop")

    def authorize(self, url: str, user: str) -> str:
        """Do what a browser does with the hub's OAuth ``url`` (its authorize endpoint):
        sign in as ``user`` on the dummy authenticator's form, then follow the hub's
        redirects until it sends the browser back to ``oauth_redirect_uri``; that URL
        (with ``code`` and ``state``)."""
        back = self.oauth_redirect_uri

        class StopAtCallback(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
                if newurl.startswith(back):
                    return None  # urllib raises HTTPError with the redirect instead
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), StopAtCallback()
        )
        # The hub sends a browser that is not signed in to its login form (with ?next=
        # the authorize URL); the form signs in and goes on there.
        data = None
        for _ in range(2):
            try:
                with opener.open(url, data, timeout=10) as resp:
                    page = resp.read().decode(errors="replace")
                    url = resp.geturl()
            except urllib.error.HTTPError as exc:
                if exc.code in (302, 303) and exc.headers["Location"].startswith(back):
                    location: str = exc.headers["Location"]
                    return location
                body = exc.read().decode(errors="replace")
                raise AssertionError(f"the hub answered {exc.code} to {exc.url}: {body}") from None
            found = re.search(r'name="_xsrf" value="([^"]+)"', page)
            if found is None or "/hub/login" not in url:
                break
            fields = {"username": user, "password": "any", "_xsrf": found.group(1)}
            data = urllib.parse.urlencode(fields).encode()
        raise AssertionError(f"the hub did not send the browser back to {back}: {page[-2000:]}")

    def answers(self) -> bool:
        try:
            return "version" in self.api("GET", "/")
        except (OSError, ValueError):
            return False

    def _proxy_pid(self) -> int | None:
        try:
            return int((self.directory / "proxy.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the hub, then the proxy if the hub left it running (both by PID)."""
        proxy = self._proxy_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # The hub stops its proxy itself; one it left is killed, checked to be ours
        # (a second stop() must not signal whatever process took the PID since).
        if proxy is not None and _is_proxy(proxy):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy, signal.SIGTERM)


def _is_proxy(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"configurable-http-proxy" in cmdline


@contextlib.contextmanager
def jupyterhub_hub() -> Iterator[JupyterHub]:
    """A hub on free ports for the duration of the block."""
    if not HUB.exists() or not PROXY.exists():
        _unavailable(f"{HUB.parent.parent} not installed (make .cache/jupyterhub/.installed)")
    with tempfile.TemporaryDirectory(prefix="flotilla-hub-") as tmp:
        directory = Path(tmp)
        proxy_port, proxy_api_port, hub_port, gateway_port = free_ports(4)
        oauth_redirect_uri = f"http://127.0.0.1:{gateway_port}{OAUTH_CALLBACK_PATH}"
        service_token, admin_token = secrets.token_hex(16), secrets.token_hex(16)
        config = directory / "jupyterhub_config.py"
        config.write_text(
            CONFIG.format(
                proxy_port=proxy_port,
                proxy_api_port=proxy_api_port,
                hub_port=hub_port,
                proxy=str(PROXY),
                proxy_pid_file=str(directory / "proxy.pid"),
                hub_pid_file=str(directory / "hub.pid"),
                db=str(directory / "jupyterhub.sqlite"),
                cookie_secret=str(directory / "cookie_secret"),
                service_token=service_token,
                admin_token=admin_token,
                oauth_redirect_uri=oauth_redirect_uri,
            )
        )
        hub = JupyterHub(directory, hub_port, service_token, admin_token)
        hub.url = f"http://127.0.0.1:{proxy_port}"
        hub.gateway_port = gateway_port
        hub.oauth_redirect_uri = oauth_redirect_uri
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env["CONFIGPROXY_AUTH_TOKEN"] = secrets.token_hex(16)
        log = (directory / "hub.log").open("wb")
        hub.process = subprocess.Popen(
            [str(HUB), "-f", str(config)],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            started = time.monotonic()

            def up() -> bool:
                assert hub.process is not None
                if hub.process.poll() is not None:
                    raise RuntimeError("the hub exited")
                return hub.answers()

            try:
                wait_for(up, 60, "the hub's API")
            except AssertionError:
                tail = (directory / "hub.log").read_text(errors="replace")[-2000:]
                raise AssertionError(
                    f"JupyterHub did not start in {time.monotonic() - started:.0f}s:\n{tail}"
                ) from None
            yield hub
        finally:
            hub.stop()
            log.close()
