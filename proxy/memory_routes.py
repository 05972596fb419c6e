"""The memory API's routes and its OpenAPI document (``/openapi.json``).

Each path answers every method itself (405 in OpenAI's error shape for the wrong one), so a
wrong method on a memory path is never passed through to the upstream as ``/v1/*`` would be.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.api import MemoriesAPI, dispatch
from proxy.errors import MemoryUnavailable
from proxy.openapi import openapi_document
from proxy.transfer import export_user, import_memories
from proxy.user_jobs import user_jobs

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

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
    "/v1/memories/{memory_id}": {
        "GET": _method("get"), "PATCH": _method("patch"), "DELETE": _method("delete"),
    },
    "/v1/memories/{memory_id}/history": {"GET": _method("history")},
    "/v1/users/{user_id}/export": {"GET": export_user},
    "/v1/users/{user_id}/jobs": {"GET": user_jobs},
    "/v1/users/{user_id}": {"DELETE": _method("forget_user")},
}


def memory_routes() -> list[Route]:
    document: dict[str, Any] = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes = [Route("/openapi.json", openapi, methods=["GET"])]
    for path, operations in PATHS.items():
        endpoint = dispatch({method: _on_api(op) for method, op in operations.items()})
        routes.append(Route(path, endpoint, methods=ALL_METHODS))
    return routes
