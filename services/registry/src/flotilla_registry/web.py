"""The web page: one HTML page, its script and its style sheet, served at ``/`` and
``/ui/<file>`` (Envoy routes both here without auth: they hold no data; everything the
page shows comes from the API, authenticated like any client's calls).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

__all__ = ["WEB_DIR", "WEB_HEADERS", "add_web_routes"]

#: The web page's files (served at / and /ui/), and the headers every one goes with: a
#: strict Content-Security-Policy (our own scripts and styles only, no inline code, no
#: framing), no MIME sniffing, no referrer.
WEB_DIR = Path(__file__).parent / "web_assets"
WEB_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_WEB_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


async def _web_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file", "index.html")
    path = WEB_DIR / name
    content_type = _WEB_TYPES.get(path.suffix)
    if content_type is None or "/" in name or not path.is_file():
        return web.json_response({"error": "Not Found"}, status=404)
    return web.Response(
        body=path.read_bytes(), content_type=content_type, charset="utf-8", headers=WEB_HEADERS
    )


def add_web_routes(app: web.Application) -> None:
    """Serve the web page from ``app`` (the registry's HTTP server)."""
    app.router.add_get("/", _web_page)
    app.router.add_get("/ui/{file}", _web_page)
