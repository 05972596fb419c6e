"""An httpx transport on aiohttp: the same ``httpx.AsyncClient`` API, a faster HTTP/1.1 client.

httpx's own transport (httpcore + h11, pure Python) costs ~1.2 ms of CPU per forwarded request
on the event loop; aiohttp's C parser ~0.1 ms (measured on the benchmark machine against the
fake upstream, 32 concurrent). The official OpenAI SDK offers the same swap. Bodies stream in
both directions; nothing is decompressed (the proxy relays the upstream's bytes); aiohttp's
exceptions become the httpx ones ``proxy/gateway/upstream.py`` translates:
connect failures → ``httpx.ConnectError`` / ``ConnectTimeout``, a read that times out →
``httpx.ReadTimeout``, a broken connection or body → ``httpx.RemoteProtocolError``, anything
else of aiohttp's → ``httpx.TransportError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict


def _translated(exc: BaseException, request: httpx.Request) -> httpx.HTTPError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc) or type(exc).__name__, request=request)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("connect timed out", request=request)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout("read timed out", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | aiohttp.ClientOSError):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request)
    return httpx.TransportError(str(exc) or type(exc).__name__, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translated(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (opened on first use, inside the running loop)."""

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, max_connections: int,
        keepalive_expiry: float = 30.0,
    ):
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._fallback = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections,
                                keepalive_expiry=keepalive_expiry),
        )

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0,
                keepalive_timeout=self._keepalive, ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False,
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        try:
            # aiohttp writes header text as UTF-8: the text that gives back the bytes that
            # arrived. Bytes that are no UTF-8 at all (rare) go through httpx's own transport,
            # which sends them as they are.
            headers: CIMultiDict[str] = CIMultiDict(
                (name.decode("latin-1"), value.decode("utf-8"))
                for name, value in request.headers.raw
                if name.lower() not in (b"host", b"content-length", b"transfer-encoding")
            )
        except UnicodeDecodeError:
            return await self._fallback.handle_async_request(request)
        data: Any
        if isinstance(request.stream, httpx.ByteStream):
            data = request.content
        else:
            data = _chunks(request.stream)  # a streamed upload (passthrough)
        try:
            response = await session.request(
                request.method, str(request.url), headers=headers, data=data or None,
                allow_redirects=False, compress=None, chunked=None,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translated(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=[(name, value) for name, value in response.raw_headers],
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
            request=request,
        )

    async def aclose(self) -> None:
        await self._fallback.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


def upstream_transport(settings: Any) -> httpx.AsyncBaseTransport | None:
    """The transport ``upstream.transport`` names (an ``UpstreamSettings``); None: httpx's."""
    if settings.transport != "aiohttp":
        return None
    return AiohttpTransport(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        max_connections=settings.max_connections,
    )
