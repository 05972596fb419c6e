"""Talking to the model provider: one pooled httpx client for OpenAI-compatible upstreams.

httpx exceptions are translated here, where they enter our code:
connect failures → UpstreamUnreachable (502), read/write/pool timeouts → UpstreamTimeout (504),
any other transport failure → UpstreamError (502).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from http.cookiejar import CookieJar
from typing import Any

import httpx

from proxy.config import Settings
from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from proxy.gateway.aiohttp_transport import upstream_transport

log = logging.getLogger("memproxy.upstream")

# RFC 9110 §7.6.1 hop-by-hop headers, plus those the transport recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    }
)


def _without_hop_by_hop(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = list(items)
    named_by_connection = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in items
        if name.lower() not in HOP_BY_HOP and name.lower() not in named_by_connection
    ]


def _header_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as the bytes that arrived: servers hand them over decoded as latin-1, and httpx
    would encode str values as ASCII (a UTF-8 user id in a header would be a 500)."""

    def encode(text: str) -> bytes:
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:  # our own values (a configured key) may be any text
            return text.encode("utf-8")

    return [(encode(name), encode(value)) for name, value in headers]


def with_accept_encoding(
    headers: list[tuple[str, str]], identity_encoding: bool
) -> list[tuple[str, str]]:
    """The encodings the upstream may answer with: what the client accepts, never more.

    Without a header of the client's, httpx would add its own default (gzip …) and a
    passthrough would hand the client a body it never asked to decode. ``identity_encoding``:
    we read the answer ourselves (for extraction), so it must come uncompressed.
    """
    if identity_encoding or not any(n.lower() == "accept-encoding" for n, _ in headers):
        headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]
        headers.append(("accept-encoding", "identity"))
    return headers


def translate_transport_error(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamUnreachable(f"upstream unreachable: {type(exc).__name__}")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream timed out: {type(exc).__name__}")
    return UpstreamError(f"upstream failed: {type(exc).__name__}")


class NoCookies(CookieJar):
    """The client's cookie jar, kept empty: one client serves every caller, so a cookie the
    provider set on one caller's response (Cloudflare's on OpenAI's API, a self-hosted
    upstream's session) would otherwise go upstream with every later caller's request. The
    response still carries its ``set-cookie`` back to the caller it was for."""

    def set_cookie(self, cookie: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class HttpUpstream:
    """Forwards requests to ``upstream.url``; bodies stream through in both directions."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        up = settings.upstream
        self.base_url = settings.upstream_base
        self._api_key = up.api_key.get_secret_value() if up.api_key else None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=up.connect_timeout, read=up.read_timeout, write=up.read_timeout,
                pool=up.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=up.max_connections,
                max_keepalive_connections=up.max_keepalive_connections,
                keepalive_expiry=30,
            ),
            # aiohttp underneath by default (upstream.transport): ~10x less CPU per request.
            transport=transport if transport is not None else upstream_transport(up),
            follow_redirects=False,
            trust_env=False,
            cookies=NoCookies(),
        )

    @property
    def has_own_key(self) -> bool:
        return self._api_key is not None

    def request_headers(
        self, incoming: Iterable[tuple[str, str]], *, identity_encoding: bool = False
    ) -> list[tuple[str, str]]:
        headers = _without_hop_by_hop(incoming)
        if self._api_key is not None:
            headers = [(n, v) for n, v in headers if n.lower() != "authorization"]
            headers.append(("authorization", f"Bearer {self._api_key}"))
        return with_accept_encoding(headers, identity_encoding)

    def caller_api_key(self, incoming: Mapping[str, str]) -> str | None:
        """The key the upstream will see: ours if configured, else the caller's (memory only)."""
        if self._api_key is not None:
            return self._api_key
        auth = incoming.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: bytes = b"",
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        """Open a streamed response; the caller must ``aclose()`` it."""
        url = self.base_url + path
        request = self._client.build_request(
            method, url, params=None, headers=_header_bytes(headers), content=content
        )
        if query:
            request.url = request.url.copy_with(query=query)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            # The URL without its query (a provider may take a key there), never a header.
            detail = str(exc).replace(self._api_key, "***") if self._api_key else str(exc)
            log.warning("upstream %s %s failed: %s: %s", method, url, type(exc).__name__,
                        detail or "(no detail)")
            raise translate_transport_error(exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def response_headers(upstream: httpx.Response, *, keep_encoding: bool) -> list[tuple[str, str]]:
    headers = _without_hop_by_hop(upstream.headers.multi_items())
    if not keep_encoding:
        headers = [(n, v) for n, v in headers if n.lower() != "content-encoding"]
    return headers


async def iter_raw(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The upstream body as it arrives; transport errors mid-body end the stream."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        url = response.request.url.copy_with(query=None)
        log.warning("upstream %s %s failed mid-body: %s", response.request.method, url,
                    type(exc).__name__)
        raise translate_transport_error(exc) from exc
    finally:
        await response.aclose()
