"""Every other /v1/* path: forwarded unchanged, bodies streamed both ways."""

from __future__ import annotations

from starlette.requests import Request

from proxy.config import Settings
from proxy.gateway.forwarding import outgoing_headers
from proxy.gateway.relay import RelayResponse
from proxy.gateway.upstream import HttpUpstream, iter_raw, response_headers


async def _body(request: Request):  # type: ignore[no-untyped-def]
    async for chunk in request.stream():
        if chunk:
            yield chunk


class Passthrough:
    """``prefix`` is put before the route's ``path`` (``/v1/messages/`` for Anthropic's)."""

    def __init__(self, upstream: HttpUpstream, settings: Settings, prefix: str = "/"):
        self._upstream = upstream
        self._settings = settings
        self._prefix = prefix

    async def __call__(self, request: Request) -> RelayResponse:
        upstream = self._upstream
        headers = upstream.request_headers(
            outgoing_headers(request.headers.items(), self._settings)
        )
        length = request.headers.get("content-length")
        has_body = bool(length and length != "0") or "transfer-encoding" in request.headers
        if length:
            # Keep the client's framing: some upstreams refuse chunked request bodies.
            headers.append(("content-length", length))
        response = await upstream.send(
            request.method,
            self._prefix + request.path_params["path"],
            query=request.url.query.encode("latin-1"),
            headers=headers,
            content=_body(request) if has_body else None,
        )
        return RelayResponse(
            response.status_code, response_headers(response, keep_encoding=True),
            iter_raw(response),
        )
