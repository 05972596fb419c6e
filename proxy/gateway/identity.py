"""Who is calling: tenant, user, agent, session and the memory mode of one request.

The user comes from the first configured user header that is present (default
``X-User-Id``, then Open WebUI's ``X-OpenWebUI-User-Id``), else from the body: ``user``,
``safety_identifier``, ``metadata.user_id`` (Anthropic's).
The session likewise: ``X-Session-Id``, then Open WebUI's ``X-OpenWebUI-Chat-Id``.
Accepted ids: 1..max_id_length printable characters, no control characters.
The tenant namespaces memories (tenant A's ``user_42`` is not tenant B's); it comes from the
caller's proxy key in keys mode (proxy/gateway/auth.py) and is ``default`` otherwise.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy.config import IdentitySettings
from proxy.errors import InvalidHeader, InvalidRequest

MemoryMode = Literal["on", "off", "read", "write"]
MODES: tuple[MemoryMode, ...] = ("on", "off", "read", "write")
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Identity:
    user_id: str | None
    agent_id: str | None = None
    session_id: str | None = None
    mode: MemoryMode = "on"
    # Last, with a default: Identity(**asdict(identity)) round-trips (job rows), and jobs
    # written before tenants existed load as the default tenant.
    tenant: str = DEFAULT_TENANT

    @property
    def reads(self) -> bool:
        return self.user_id is not None and self.mode in ("on", "read")

    @property
    def writes(self) -> bool:
        return self.user_id is not None and self.mode in ("on", "write")


def check_id(value: str, what: str, max_length: int, *, header: bool) -> str:
    error = InvalidHeader if header else InvalidRequest
    value = value.strip()
    if not value:
        raise error(f"{what} must not be empty")
    if len(value) > max_length:
        raise error(f"{what} is longer than {max_length} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise error(f"{what} must not contain control characters")
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        raise error(f"{what} must not contain a lone surrogate (such as \\ud800)")
    return value


def header_text(raw: str) -> str:
    """Header values arrive decoded as latin-1; ids are UTF-8 (same id as in the body)."""
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _body_user(body: Mapping[str, Any]) -> tuple[str, str] | None:
    for field in ("user", "safety_identifier"):
        value = body.get(field)
        if isinstance(value, str) and value.strip():
            return field, value
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        value = metadata.get("user_id")
        if isinstance(value, str) and value.strip():
            return "metadata.user_id", value
    return None


def _named_user(
    headers: Mapping[str, str], body: Mapping[str, Any], settings: IdentitySettings
) -> str | None:
    limit = settings.max_id_length
    for name in settings.user_headers:
        raw = headers.get(name)
        if raw is not None:
            return check_id(header_text(raw), f"header {name}", limit, header=True)
    found = _body_user(body)
    if found is not None:
        return check_id(found[1], f"body field {found[0]}", limit, header=False)
    return None


def resolve_identity(
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    settings: IdentitySettings,
    *,
    tenant: str = DEFAULT_TENANT,
    bound_user: str | None = None,
) -> Identity:
    """The request's identity; ``bound_user`` (a proxy key's user) wins over any named user."""
    limit = settings.max_id_length
    user_id = bound_user if bound_user is not None else _named_user(headers, body, settings)

    def optional(name: str) -> str | None:
        raw = headers.get(name)
        if raw is None:
            return None
        return check_id(header_text(raw), f"header {name}", limit, header=True)

    raw_mode = headers.get(settings.mode_header)
    mode: MemoryMode = settings.default_mode
    if raw_mode is not None:
        wanted = raw_mode.strip().lower()
        if wanted not in MODES:
            raise InvalidHeader(
                f"header {settings.mode_header} must be one of {', '.join(MODES)}, "
                f"got {raw_mode[:40]!r}"
            )
        mode = wanted  # type: ignore[assignment]
    session_header = next((n for n in settings.session_headers if n in headers), None)
    return Identity(
        user_id=user_id,
        agent_id=optional(settings.agent_header),
        session_id=optional(session_header) if session_header is not None else None,
        mode=mode,
        tenant=tenant,
    )
