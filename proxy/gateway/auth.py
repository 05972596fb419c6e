"""Who is calling, proven: proxy keys, signed user ids, the admin key.

Chat requests (``identify``), by ``auth.mode``:
- ``none``: the user named in headers or body, tenant ``default`` (proxy/gateway/identity.py).
- ``keys``: ``Authorization: Bearer mp-…`` must be an active proxy key (else 401). Its tenant
  namespaces the memories; a key bound to a user speaks for that user only, whatever user
  headers or body fields say. The caller's key never reaches the upstream (the proxy holds
  ``upstream.api_key``); other ``/v1/*`` paths need a proxy key too (``admit``).
- ``signed``: a named user must come with ``X-User-Signature: hex(HMAC-SHA256(secret, user
  id))`` (else 401): a gateway that authenticated the user vouches for the id.

Memory API (``memory_scope``): the admin key sees every tenant; with no admin key configured
loopback clients are the admin — except in keys mode, where that needs
``auth.loopback_admin: true`` (a reverse proxy on the same host makes every client loopback).
In keys mode a proxy key may call it too, limited to its tenant (and its user, when bound).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config import Settings
from proxy.errors import AuthenticationFailed, NotFound, PermissionDenied
from proxy.gateway.identity import DEFAULT_TENANT, Identity, header_text, resolve_identity
from proxy.gateway.keys import TOKEN_PREFIX, KeyStore, ProxyKey
from proxy.state.engine import database_target

log = logging.getLogger("memproxy.auth")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def sign_user_id(secret: str, user_id: str) -> str:
    """The signature a gateway sends for ``user_id`` (hex HMAC-SHA256)."""
    mac = hmac.new(secret.encode(), user_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return mac.hexdigest()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Scope:
    """Whose memories a memory-API caller may touch: None means any."""

    tenant: str | None = None
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def tenant_for(self, asked: str | None) -> str:
        if self.tenant is None:
            return asked or DEFAULT_TENANT
        if asked is not None and asked != self.tenant:
            raise PermissionDenied("this key belongs to another tenant")
        return self.tenant

    def user_for(self, asked: str | None) -> str | None:
        if self.user_id is None:
            return asked
        if asked is not None and asked != self.user_id:
            raise PermissionDenied("this key speaks for another user")
        return self.user_id

    def allows(self, tenant: str, user_id: str) -> bool:
        return (self.tenant is None or self.tenant == tenant) and (
            self.user_id is None or self.user_id == user_id
        )

    def check(self, tenant: str, user_id: str, what: str) -> None:
        """Not found, rather than forbidden: another owner's ids are not confirmed."""
        if not self.allows(tenant, user_id):
            raise NotFound(f"no such {what}")


ADMIN = Scope()


class Authenticator:
    def __init__(self, settings: Settings, keys: KeyStore | None = None):
        self._settings = settings
        self._keys = keys
        mode = settings.auth.mode
        if mode == "keys" and keys is None:
            raise ValueError("keys mode needs the key store")
        secret = settings.auth.signing_secret
        self._secret = secret.get_secret_value() if secret is not None else None

    @property
    def mode(self) -> str:
        return self._settings.auth.mode

    def _proxy_key(self, headers: Mapping[str, str]) -> ProxyKey:
        token = bearer_token(headers)
        if token is None:
            raise AuthenticationFailed(
                "a proxy key is required: send Authorization: Bearer mp-…"
            )
        assert self._keys is not None
        key = self._keys.lookup(token)
        if key is None:
            raise AuthenticationFailed("incorrect or revoked proxy key")
        return key

    def _is_admin_key(self, token: str | None) -> bool:
        admin_key = self._settings.admin_key
        return admin_key is not None and token is not None and hmac.compare_digest(
            token.encode(), admin_key.get_secret_value().encode()
        )

    def _refuse_admin_key(self, headers: Mapping[str, str]) -> None:
        """The admin key never leaves the proxy: a request to be forwarded carrying it is
        refused (without upstream.api_key the caller's Authorization would go upstream)."""
        if self._is_admin_key(bearer_token(headers)):
            raise PermissionDenied(
                "the admin key is for the memory API only and is never forwarded upstream: "
                "send your provider key (or, in keys mode, a proxy key)", code="admin_key",
            )

    def admit(self, headers: Mapping[str, str]) -> None:
        """Requests passed through to the upstream (models, embeddings …)."""
        self._refuse_admin_key(headers)
        if self.mode == "keys":
            self._proxy_key(headers)

    def identify(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> Identity:
        self._refuse_admin_key(headers)
        identity_settings = self._settings.identity
        if self.mode == "keys":
            key = self._proxy_key(headers)
            return resolve_identity(
                headers, body, identity_settings, tenant=key.tenant, bound_user=key.user_id
            )
        identity = resolve_identity(headers, body, identity_settings)
        if self.mode == "signed" and identity.user_id is not None:
            self._check_signature(headers, identity.user_id)
        return identity

    def _check_signature(self, headers: Mapping[str, str], user_id: str) -> None:
        assert self._secret is not None
        name = self._settings.auth.signature_header
        given = header_text(headers.get(name, "")).strip().lower()
        given = given.removeprefix("sha256=")
        expected = sign_user_id(self._secret, user_id)
        if not given or not hmac.compare_digest(given, expected):
            raise AuthenticationFailed(
                f"header {name} must carry the HMAC-SHA256 of the user id",
                code="invalid_user_signature",
            )

    def memory_scope(self, headers: Mapping[str, str], client_host: str | None) -> Scope:
        token = bearer_token(headers)
        admin_key = self._settings.admin_key
        if self._is_admin_key(token):
            return ADMIN
        if self._keys is not None and token is not None and token.startswith(TOKEN_PREFIX):
            key = self._keys.lookup(token)
            if key is None:
                raise AuthenticationFailed("incorrect or revoked proxy key")
            return Scope(key.tenant, key.user_id)
        if admin_key is None:
            keys_mode = self.mode == "keys"
            if is_loopback(client_host) and (not keys_mode or self._settings.auth.loopback_admin):
                return ADMIN
            if keys_mode:
                raise AuthenticationFailed(
                    "the memory API needs the admin key (MEMPROXY_ADMIN_KEY) or a proxy key; "
                    "auth.loopback_admin: true lets loopback clients in without one"
                )
            raise PermissionDenied(
                "the memory API answers only loopback clients while no admin key is set"
            )
        raise AuthenticationFailed("a valid admin key is required for the memory API")

    def close(self) -> None:
        if self._keys is not None:
            self._keys.close()


def open_authenticator(settings: Settings) -> Authenticator:
    """Blocking (opens the key table in keys mode). Fails closed: no key store, no start."""
    mode = settings.auth.mode
    keys = KeyStore(
        database_target(settings), pool_size=settings.state.pool_size
    ) if mode == "keys" else None
    if keys is not None:
        log.info("auth: keys mode, %d active proxy keys", len(keys.list()))
    elif mode == "signed":
        log.info("auth: signed user ids (%s)", settings.auth.signature_header)
    return Authenticator(settings, keys)
