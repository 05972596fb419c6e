"""The memory API's routes and its OpenAPI document (``/openapi.json``).

Nothing under ``/v1/memories`` or ``/v1/users`` is ever passed through to the upstream as
other ``/v1/*`` paths are (the request would carry the memory API's credentials there): a
path no route takes is a 404, a wrong method a 405 with ``Allow``, both in OpenAI's shape.
A user id may hold ``/`` (``team/alice``), percent-encoded or not: the user routes take the
rest of the path as the id, so ``DELETE /v1/users/team/alice`` forgets ``team/alice`` and
``GET /v1/users/team/alice/export`` exports them. A path whose last segment, as sent, is one
of the user routes' words (``…/export``, ``…/jobs``) is that route; a user id ending in such a
word is addressed with its ``/`` encoded (``DELETE /v1/users/bob%2Fexport``). Memory ids
never hold ``/`` (ours are hex; an import refuses others, see proxy/api.memory_id_problem).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from proxy.api.explain import explain, injections
from proxy.api.jobs import list_jobs, purge_jobs, retry_jobs
from proxy.api.memories import RESERVED_MEMORY_IDS, MemoriesAPI
from proxy.api.openapi import openapi_document
from proxy.api.transfer import export_user, import_memories
from proxy.api.user_jobs import user_jobs
from proxy.api.users import list_users
from proxy.errors import MemoryUnavailable, MethodNotAllowed, NotFound

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Everything under these belongs to the memory API (and so never leaves the proxy).
PREFIXES = ("/v1/memories", "/v1/users")

Operation = Callable[[MemoriesAPI, Request], Awaitable[Response]]


def _on_api(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        api: MemoriesAPI | None = request.app.state.memories
        if api is None:
            raise MemoryUnavailable("the memory store could not be opened")
        return await operation(api, request)

    return endpoint


def _method(name: str) -> Operation:
    async def call(api: MemoriesAPI, request: Request) -> Response:
        handler: Callable[[Request], Awaitable[Response]] = getattr(api, name)
        return await handler(request)

    return call


PATHS: dict[str, dict[str, Operation]] = {
    "/v1/memories": {"GET": _method("list_memories"), "POST": _method("create")},
    "/v1/memories/import": {"POST": import_memories},
    "/v1/memories/search": {"POST": _method("search")},
    "/v1/memories/explain": {"POST": explain},
    "/v1/memories/injections": {"GET": injections},
    "/v1/memories/jobs": {"GET": list_jobs},
    "/v1/memories/jobs/retry": {"POST": retry_jobs},
    "/v1/memories/jobs/purge": {"POST": purge_jobs},
    "/v1/memories/{memory_id}": {
        "GET": _method("get"), "PATCH": _method("patch"), "DELETE": _method("delete"),
    },
    "/v1/memories/{memory_id}/history": {"GET": _method("history")},
    "/v1/users": {"GET": list_users},
    "/v1/users/{user_id}/export": {"GET": export_user},
    "/v1/users/{user_id}/jobs": {"GET": user_jobs},
    "/v1/users/{user_id}": {"DELETE": _method("forget_user")},
}


# Last segments of the routes under a user: "/v1/users/x/export" is never the user "x/export".
USER_ROUTE_WORDS = frozenset(
    path.rsplit("/", 1)[1].encode() for path in PATHS if path.startswith("/v1/users/{user_id}/")
)


def _names_a_user_route(scope: Any) -> bool:
    """The path as sent (``raw_path``: ``%2F`` still encoded) ends in ``/<user route word>``."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    user_part = raw.split(b"?", 1)[0].removeprefix(b"/v1/users/")
    return b"/" in user_part and user_part.rsplit(b"/", 1)[1] in USER_ROUTE_WORDS


def _route_path(path: str) -> str:
    """The documented path as a Starlette route: a user id is the rest of the path."""
    return path.replace("{user_id}", "{user_id:path}")


class _ApiRoute(Route):
    """A route whose ``{memory_id}`` is never one of the words routes use (``import`` …), and
    whose ``{user_id}`` at the end of the path never ends with one (``export`` …)."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        if child.get("path_params", {}).get("memory_id") in RESERVED_MEMORY_IDS:
            return Match.NONE, {}
        if self.path.endswith("{user_id:path}") and _names_a_user_route(scope):
            return Match.NONE, {}
        return match, child


def _not_routed(routes: list[_ApiRoute]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        # The first route whose path matches decides (as for a full match): for
        # /v1/users/ann/export that is the export route, not "DELETE user 'ann/export'".
        partial = next(
            (r for r in routes if r.matches(request.scope)[0] is Match.PARTIAL), None
        )
        allowed = sorted({
            method for route in routes if partial is not None and route.path == partial.path
            for method in route.methods or ()
        })
        if allowed:
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path} "
                f"(allowed: {', '.join(allowed)})", allow=allowed,
            )
        raise NotFound(f"no memory API route for {request.method} {request.url.path}")

    return endpoint


def memory_routes(max_id_length: int = 256) -> list[Route]:
    document: dict[str, Any] = openapi_document(max_id_length)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    api_routes = [
        _ApiRoute(_route_path(path), _on_api(operation), methods=[method])
        for path, operations in PATHS.items() for method, operation in operations.items()
    ]
    # Last: whatever the routes above did not take fully (wrong method, unknown path).
    fallbacks = [
        Route(prefix + "{rest:path}", _not_routed(api_routes), methods=ALL_METHODS)
        for prefix in PREFIXES
    ]
    return [Route("/openapi.json", openapi, methods=["GET"]), *api_routes, *fallbacks]
