"""``GET /v1/users``: who has memories — found by id prefix, with counts and last activity.

Scoped like the rest of the memory API: the admin key lists any one tenant (``tenant``,
default ``default``) and is told every tenant there is (``tenants``: the console's tenant
switch); a proxy key lists its own tenant only, and a key bound to a user only that user.
Ordered by user id (``order=id``) or most recent activity first (``order=recent``), in pages
of ``limit`` with an opaque ``next_cursor``. Counts are read from the store itself
(proxy/memory/users.py): a user whose memories were all deleted is not listed.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.memories import MemoriesAPI, int_param
from proxy.errors import InvalidRequest
from proxy.gateway.auth import Scope
from proxy.gateway.identity import check_id
from proxy.memory.users import UserSummary

ORDERS = ("id", "recent")


def _sort_key(summary: UserSummary, order: str) -> tuple[Any, ...]:
    if order == "recent":
        return (-summary.last_activity, summary.user_id)
    return (summary.user_id,)


def encode_cursor(key: tuple[Any, ...], order: str) -> str:
    raw = json.dumps({"o": order, "k": list(key)}, ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> tuple[Any, ...]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key = tuple(data["k"])
        valid = data["o"] == order and len(key) == len(_sort_key(UserSummary("", ""), order))
        valid = valid and all(isinstance(part, str | int | float) for part in key)
    except (binascii.Error, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidRequest("'cursor' is not a next_cursor of this listing", param="cursor")
    return key


def scope_json(scope: Scope) -> dict[str, Any]:
    return {"admin": scope.is_admin, "tenant": scope.tenant, "user_id": scope.user_id}


async def list_users(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    query = request.query_params
    max_id = api.s.settings.identity.max_id_length
    asked = query.get("tenant")
    tenant = scope.tenant_for(check_id(asked, "tenant", max_id, header=False)
                              if asked is not None else None)
    prefix = query.get("prefix", "")
    if len(prefix) > max_id:
        raise InvalidRequest(f"'prefix' is longer than {max_id} characters", param="prefix")
    order = query.get("order", "id")
    if order not in ORDERS:
        raise InvalidRequest("'order' must be id or recent", param="order")
    limit = int_param(request, "limit", 50, 1, 1000)
    after = decode_cursor(query["cursor"], order) if query.get("cursor") else None

    everyone: list[UserSummary] = await api.run(api.s.store.user_summaries)
    tenants = sorted({s.tenant for s in everyone})
    chosen = sorted(
        (s for s in everyone
         if s.tenant == tenant and s.user_id.startswith(prefix)
         and scope.allows(s.tenant, s.user_id)),
        key=lambda s: _sort_key(s, order),
    )
    if after is not None:
        chosen = [s for s in chosen if _sort_key(s, order) > after]
    page, more = chosen[:limit], len(chosen) > limit
    return JSONResponse({
        "object": "list", "tenant": tenant,
        "data": [s.to_json() for s in page],
        "has_more": more,
        "next_cursor": encode_cursor(_sort_key(page[-1], order), order) if more else None,
        "tenants": tenants if scope.is_admin else [tenant],
        "scope": scope_json(scope),
    })
