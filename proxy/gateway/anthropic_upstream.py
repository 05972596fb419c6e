"""The Anthropic-compatible upstream of ``/v1/messages`` (``anthropic.url``).

Anthropic authenticates with ``x-api-key`` (or ``Authorization: Bearer`` for OAuth tokens):
the caller's passes through unless ``anthropic.api_key`` is configured, which then replaces
both. ``anthropic-version`` and ``anthropic-beta`` pass like any other header. In keys mode
the caller presents a proxy key, which must never reach the provider: the proxy's own key is
required there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import httpx

from proxy.config import Settings
from proxy.errors import NotConfigured
from proxy.gateway.upstream import HttpUpstream, _without_hop_by_hop, with_accept_encoding

CREDENTIAL_HEADERS = ("authorization", "x-api-key")


class AnthropicUpstream(HttpUpstream):
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(settings, transport)
        self.base_url = settings.anthropic_base
        key = settings.anthropic.api_key
        self._api_key = key.get_secret_value() if key is not None else None
        self._keys_mode = settings.auth.mode == "keys"

    def request_headers(
        self, incoming: Iterable[tuple[str, str]], *, identity_encoding: bool = False
    ) -> list[tuple[str, str]]:
        headers = _without_hop_by_hop(incoming)
        if self._api_key is not None or self._keys_mode:
            if self._api_key is None:
                raise NotConfigured(
                    "auth.mode keys: /v1/messages needs anthropic.api_key "
                    "(MEMPROXY_ANTHROPIC_API_KEY); a proxy key is never sent to a provider"
                )
            headers = [(n, v) for n, v in headers if n.lower() not in CREDENTIAL_HEADERS]
            headers.append(("x-api-key", self._api_key))
        return with_accept_encoding(headers, identity_encoding)

    def caller_api_key(self, incoming: Mapping[str, str]) -> str | None:
        if self._api_key is not None:
            return self._api_key
        key = incoming.get("x-api-key", "").strip()
        return key or super().caller_api_key(incoming)
