"""The memory API (read side for now): ``GET /v1/memories?user_id=U``.

Guarded by the admin key (``Authorization: Bearer <MEMPROXY_ADMIN_KEY>``); with no admin
key configured only loopback clients are answered.
"""

from __future__ import annotations

import hmac
import ipaddress

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.config import Settings
from proxy.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from proxy.identity import check_id
from proxy.store import MemoryStore


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def require_admin(request: Request, settings: Settings) -> None:
    if settings.admin_key is None:
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise PermissionDenied(
                "the memory API answers only loopback clients while no admin key is set"
            )
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    expected = settings.admin_key.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise AuthenticationFailed("a valid admin key is required for the memory API")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}", param=name)
    return int(raw)


class MemoriesAPI:
    def __init__(self, settings: Settings, store: MemoryStore):
        self._settings = settings
        self._store = store

    async def list_memories(self, request: Request) -> JSONResponse:
        require_admin(request, self._settings)
        raw_user = request.query_params.get("user_id")
        if raw_user is None:
            raise InvalidRequest("'user_id' query parameter is required", param="user_id")
        user_id = check_id(
            raw_user, "user_id", self._settings.identity.max_id_length, header=False
        )
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        memories = await anyio.to_thread.run_sync(
            self._store.list_user, user_id, limit + 1, offset
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [m.to_json() for m in memories[:limit]],
                "has_more": len(memories) > limit,
            }
        )
