"""The dask-gateway REST API (reached only through Envoy, after the auth service).

Status codes and bodies follow the reference server where clients depend on them
(``{"error": msg}``, 201/204, 404/409/422) and do better where it misbehaves: a malformed
request is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from flotilla_common.identity import IDENTITY_HEADER, Identity, InvalidIdentity, verify_identity
from flotilla_common.sessions import WEB_HEADER, SessionCookies, cross_site_refusal, read_cookie

from . import __version__
from .clusters import ClusterService
from .convert import cluster_json, web_json, worker_json
from .errors import InvalidRequest, NotAuthenticated, PermissionDenied, RegistryError
from .model import ClusterRecord, Status

__all__ = ["make_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REPORT_CACHE_SIZE = 50_000
#: An event stream writes a comment this often when nothing changed (proxies keep it open),
#: and waits this long after each batch so that a burst of changes is one event.
_KEEPALIVE_SECONDS = 15.0
_EVENT_COALESCE_SECONDS = 0.2


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as exc:
        if exc.http_status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.log_message)
        # The web page signs in its own way (no Basic challenge: no browser dialog).
        challenge = exc.http_status == 401 and WEB_HEADER not in request.headers
        headers = {"WWW-Authenticate": "Basic"} if challenge else None
        return _error(exc.http_status, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "Internal server error")


def _wait_flag(request: web.Request) -> bool:
    return _flag(request, "wait")


def _flag(request: web.Request, name: str) -> bool:
    """A query flag: ``?name``, ``?name=1`` (any non-zero number); else False."""
    if name not in request.query:
        return False
    value = request.query[name]
    if value == "":
        return True
    try:
        return bool(int(value))
    except ValueError:
        return False


class _BadRequest(RegistryError):
    http_status = 400


async def _json_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("Request body must be valid JSON") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the parser's stack
        raise _BadRequest("Request body is nested too deeply") from None


def _statuses(text: str | None) -> set[Status] | None:
    if not text:
        return None
    out = set()
    for part in text.split(","):
        name = part.strip().upper()
        try:
            out.add(Status[name])
        except KeyError:
            raise InvalidRequest(f"{part.strip()!r} is not a valid ClusterStatus") from None
    return out


class _Api:
    def __init__(
        self, service: ClusterService, identity_key: str, sessions: SessionCookies | None
    ) -> None:
        self.service = service
        self.key = identity_key
        self.sessions = sessions
        # Each cluster's JSON report, by (name, revision): a list re-encodes nothing
        # that did not change (a report with its TLS material is ~3 KB).
        self._reports: dict[tuple[str, int], bytes] = {}

    def _report(self, c: ClusterRecord) -> bytes:
        key = (c.name, c.revision)
        encoded = self._reports.get(key)
        if encoded is None:
            if len(self._reports) >= _REPORT_CACHE_SIZE:
                self._reports.clear()
            encoded = self._reports[key] = (
                json.dumps(c.name) + ":" + json.dumps(cluster_json(c))
            ).encode()
        return encoded

    def identity(self, request: web.Request) -> Identity:
        """Who is calling: the identity auth signed for this request, or else the
        session cookie auth issued earlier (Envoy's session route skips auth), while
        the roles in it are current; past that the client must go through auth (401)."""
        header = request.headers.get(IDENTITY_HEADER)
        if header is None and self.sessions is not None:
            value = read_cookie(request.headers.get("Cookie", ""), self.sessions.name)
            session = self.sessions.decode(value) if value else None
            if session is not None and "Authorization" not in request.headers:
                refusal = cross_site_refusal(request.method, request.headers)
                if refusal is not None:
                    raise PermissionDenied(refusal)
            if session is not None and self.sessions.roles_current(session):
                return Identity(user=session.user, groups=session.groups, admin=session.admin)
            if session is not None:
                raise NotAuthenticated(
                    "Authentication required",
                    log_message=f"roles of user {session.user}'s session out of date",
                )
        try:
            return verify_identity(header, self.key)
        except InvalidIdentity as exc:
            raise NotAuthenticated("Authentication required", log_message=str(exc)) from exc

    async def body_object(self, request: web.Request) -> dict[str, Any]:
        body = await _json_body(request)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise InvalidRequest(f"Request body must be a JSON object, got {type(body).__name__}")
        return body

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "pass"})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def options(self, request: web.Request) -> web.Response:
        spec = await self.service.options_spec(self.identity(request))
        return web.json_response({"cluster_options": spec.get_specification()})

    async def list_clusters(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        statuses = _statuses(request.query.get("status"))
        if _flag(request, "all_users"):
            # Not dask-gateway's (its client never asks): reports with their owners.
            clusters = await self.service.list_clusters(identity, statuses, all_users=True)
            return web.json_response(
                {c.name: {**cluster_json(c), "owner": c.owner} for c in clusters}
            )
        clusters = await self.service.list_clusters(identity, statuses)
        body = b"{" + b",".join(self._report(c) for c in clusters) + b"}"
        return web.Response(body=body, content_type="application/json")

    async def usage(self, request: web.Request) -> web.Response:
        """Not part of dask-gateway's API: quotas and what they are used for."""
        usage = await self.service.usage(self.identity(request), _flag(request, "all_users"))
        return web.json_response({"usage": usage})

    async def create(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        body = await self.body_object(request)
        c = await self.service.create(identity, body.get("cluster_options"))
        return web.json_response({"name": c.name}, status=201)

    async def get(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        wait = 20.0 if _wait_flag(request) else 0.0
        c = await self.service.get(identity, request.match_info["name"], wait)
        return web.json_response(cluster_json(c))

    async def delete(self, request: web.Request) -> web.Response:
        await self.service.stop(self.identity(request), request.match_info["name"])
        return web.Response(status=204)

    async def scale(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        body = await self.body_object(request)
        ok, msg = await self.service.scale(identity, request.match_info["name"], body.get("count"))
        return web.json_response({"ok": ok, "msg": msg or None})

    async def adapt(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        body = await self.body_object(request)
        ok, msg = await self.service.adapt(
            identity,
            request.match_info["name"],
            body.get("minimum"),
            body.get("maximum"),
            body.get("active", True),
        )
        return web.json_response({"ok": ok, "msg": msg or None})

    async def logs(self, request: web.Request) -> web.Response:
        """Not part of dask-gateway's API (its client never calls it)."""
        logs = await self.service.logs(self.identity(request), request.match_info["name"])
        return web.json_response({"logs": logs})

    async def workers(self, request: web.Request) -> web.Response:
        """Not part of dask-gateway's API: the cluster's workers, the ended ones too."""
        workers = await self.service.workers(self.identity(request), request.match_info["name"])
        return web.json_response({"workers": [worker_json(w) for w in workers]})

    async def login(self, request: web.Request) -> web.Response:
        """Who the caller is (the web page's sign-in: auth has set the session cookie)."""
        identity = self.identity(request)
        return web.json_response(
            {"user": identity.user, "groups": sorted(identity.groups), "admin": identity.admin}
        )

    async def logout(self, request: web.Request) -> web.Response:
        """Forget the session cookie in this browser (it stays valid until it expires)."""
        self.identity(request)
        response = web.Response(status=204)
        if self.sessions is not None:
            response.del_cookie(self.sessions.name, path="/")
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Not part of dask-gateway's API: the caller's active clusters, then every
        change of them, as server-sent events (``?all_users``: everyone's, admins)."""
        identity = self.identity(request)
        all_users = _flag(request, "all_users")

        def mine(_name: str, c: ClusterRecord) -> bool:
            return all_users or c.owner == identity.user

        # Subscribed before the list is read: no change between the two is missed.
        with self.service.launch_hub.subscribe(mine) as changes:
            clusters = await self.service.list_clusters(identity, None, all_users=all_users)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
            )
            await response.prepare(request)
            await _send_event(response, "clusters", [web_json(c) for c in clusters])
            while True:
                try:
                    batch = await asyncio.wait_for(changes.next_batch(), _KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await _send_event(response, "clusters", [web_json(c) for c in batch.values()])
                await asyncio.sleep(_EVENT_COALESCE_SECONDS)

    async def heartbeat(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        body = await self.body_object(request)
        await self.service.heartbeat(identity, request.match_info["name"], body)
        return web.Response(status=200)


async def _send_event(response: web.StreamResponse, event: str, data: Any) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


def make_app(
    service: ClusterService, identity_key: str, sessions: SessionCookies | None = None
) -> web.Application:
    """The REST API. ``sessions``: accept auth's session cookies as identity too."""
    api = _Api(service, identity_key, sessions)
    app = web.Application(middlewares=[_errors], client_max_size=1024**2)
    name = "{name:[A-Za-z0-9._-]+}"
    app.router.add_get("/api/health", api.health)
    app.router.add_get("/api/version", api.version)
    app.router.add_get("/api/v1/options", api.options)
    app.router.add_get("/api/v1/clusters/", api.list_clusters)
    app.router.add_post("/api/v1/clusters/", api.create)
    app.router.add_get(f"/api/v1/clusters/{name}", api.get)
    app.router.add_delete(f"/api/v1/clusters/{name}", api.delete)
    app.router.add_post(f"/api/v1/clusters/{name}/scale", api.scale)
    app.router.add_post(f"/api/v1/clusters/{name}/adapt", api.adapt)
    app.router.add_post(f"/api/v1/clusters/{name}/heartbeat", api.heartbeat)
    app.router.add_get(f"/api/v1/clusters/{name}/logs", api.logs)
    app.router.add_get(f"/api/v1/clusters/{name}/workers", api.workers)
    app.router.add_get("/api/v1/usage", api.usage)
    app.router.add_get("/api/v1/login", api.login)
    app.router.add_post("/api/v1/logout", api.logout)
    app.router.add_get("/api/v1/events", api.events)
    return app
