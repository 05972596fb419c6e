"""Every other /v1/* path: forwarded unchanged, bodies streamed both ways."""

from __future__ import annotations

from starlette.requests import Request

from proxy.gateway.relay import RelayResponse
from proxy.gateway.upstream import HttpUpstream, iter_raw, response_headers


async def _body(request: Request):  # type: ignore[no-untyped-def]
    async for chunk in request.stream():
        if chunk:
            yield chunk


class Passthrough:
    def __init__(self, upstream: HttpUpstream):
        self._upstream = upstream

    async def __call__(self, request: Request) -> RelayResponse:
        upstream = self._upstream
        headers = upstream.request_headers(request.headers.items())
        length = request.headers.get("content-length")
        has_body = bool(length and length != "0") or "transfer-encoding" in request.headers
        if length:
            # Keep the client's framing: some upstreams refuse chunked request bodies.
            headers.append(("content-length", length))
        response = await upstream.send(
            request.method,
            "/" + request.path_params["path"],
            query=request.url.query.encode("latin-1"),
            headers=headers,
            content=_body(request) if has_body else None,
        )
        return RelayResponse(
            response.status_code, response_headers(response, keep_encoding=True),
            iter_raw(response),
        )
