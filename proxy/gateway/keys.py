"""Proxy keys: ``mp-…`` tokens that admit a client in keys mode and name its tenant.

A key is shown once, when created; the table ``api_keys`` keeps only its SHA-256 (the token
is 256 random bits, so a fast hash is enough), a short prefix to recognise it by, the tenant,
and optionally the one user the key speaks for. Revoked keys stay listed, never match again.

While the database cannot be reached (a shared Postgres restarting), a key this process
verified within ``RECENT_SECONDS`` is still admitted (no revocation can happen meanwhile:
the table is unreachable for the CLI too); an unknown key is refused with 503.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from proxy.errors import NotConfigured
from proxy.state.engine import Row, Target, open_database

log = logging.getLogger("memproxy.auth")

TOKEN_PREFIX = "mp-"
RECENT_SECONDS = 3600.0
RECENT_MAX = 10_000


class KeysUnavailable(NotConfigured):
    """The key table cannot be read and the key was not verified recently: 503."""

    code = "keys_unavailable"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ProxyKey:
    id: str
    prefix: str  # the first characters of the token, e.g. "mp-3kF9x…"
    tenant: str
    user_id: str | None  # set: the key speaks for this user only
    name: str | None
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Row) -> ProxyKey:
        return cls(
            id=row["id"], prefix=row["prefix"], tenant=row["tenant"], user_id=row["user_id"],
            name=row["name"], created_at=row["created_at"], revoked_at=row["revoked_at"],
        )


class KeyStore:
    """The api_keys table. Blocking, thread-safe; look-ups are one index probe.

    ``target``: the data dir's SQLite file, or the postgresql:// URL every replica shares (a
    key created on one replica, or by the CLI, works on all of them at their next request).
    """

    def __init__(self, target: Target, *, pool_size: int = 8):
        self._db = open_database(target, pool_size=pool_size)
        self._recent: OrderedDict[str, tuple[ProxyKey, float]] = OrderedDict()
        self._lock = threading.Lock()

    def create(
        self, tenant: str, user_id: str | None = None, name: str | None = None
    ) -> tuple[ProxyKey, str]:
        """A new key and its token (the only time the token is known)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ProxyKey(
            id="key_" + secrets.token_hex(6), prefix=token[:9] + "…", tenant=tenant,
            user_id=user_id, name=name, created_at=time.time(),
        )
        self._db.write(lambda conn: conn.execute(
            "INSERT INTO api_keys (id, key_hash, prefix, tenant, user_id, name, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.id, hash_token(token), key.prefix, tenant, user_id, name, key.created_at),
        ))
        return key, token

    def lookup(self, token: str) -> ProxyKey | None:
        """The active key with this token, or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(token)
        try:
            rows = self._db.read(
                "SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,)
            )
        except Exception as exc:
            with self._lock:
                recent = self._recent.get(digest)
            if recent is not None and time.monotonic() - recent[1] < RECENT_SECONDS:
                log.warning("key table unreachable (%s): admitting a recently verified key",
                            type(exc).__name__)
                return recent[0]
            raise KeysUnavailable("the proxy key table is unreachable; try again") from exc
        key = ProxyKey.from_row(rows[0]) if rows else None
        with self._lock:
            if key is None:
                self._recent.pop(digest, None)
            else:
                self._recent[digest] = (key, time.monotonic())
                self._recent.move_to_end(digest)
                while len(self._recent) > RECENT_MAX:
                    self._recent.popitem(last=False)
        return key

    def list(self, tenant: str | None = None, include_revoked: bool = False) -> list[ProxyKey]:
        where, params = ["1 = 1"], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        rows = self._db.read(
            f"SELECT * FROM api_keys WHERE {' AND '.join(where)} ORDER BY created_at", params
        )
        return [ProxyKey.from_row(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        changed = self._db.write(lambda conn: conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        ).rowcount)
        return bool(changed)

    def close(self) -> None:
        self._db.close()
