"""``/console``: the memory console's static files (HTML, CSS, dependency-free JavaScript).

The pages hold no data and need no key to be served: everything they show comes from the
memory API (``/v1/users``, ``/v1/memories…``), called by the page's script with the key
the operator typed into it. The key is kept in the tab's ``sessionStorage`` (gone when the
tab closes) and sent as ``Authorization: Bearer`` — never in a URL, a cookie or a log line;
the page's own state (which user, which tenant) lives in the URL's fragment, which browsers
never send to the server. Every file is served with a strict Content-Security-Policy: no
inline script, nothing from another origin, no framing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.errors import NotFound

STATIC = Path(str(resources.files("proxy.console") / "static"))
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
}
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


def _file(name: str) -> Response:
    path = (STATIC / name).resolve()
    if path.parent != STATIC.resolve() or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise NotFound(f"no console file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


async def index(request: Request) -> Response:
    return _file("index.html")


async def static_file(request: Request) -> Response:
    return _file(request.path_params["name"])


async def to_index(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)


def console_routes() -> list[BaseRoute]:
    return [
        Route("/console", to_index, methods=["GET", "HEAD"]),
        Route("/console/", index, methods=["GET", "HEAD"]),
        Route("/console/{name}", static_file, methods=["GET", "HEAD"]),
    ]
