from __future__ import annotations

import pytest

from proxy.config import IdentitySettings
from proxy.errors import InvalidHeader, InvalidRequest
from proxy.gateway.identity import resolve_identity

SETTINGS = IdentitySettings(user_headers=["X-OpenWebUI-User-Id", "X-User-Id"])


def test_header_wins_over_body_and_first_configured_header_wins() -> None:
    headers = {"X-User-Id": "from-header", "X-OpenWebUI-User-Id": "webui"}
    found = resolve_identity(headers, {"user": "from-body"}, SETTINGS)
    assert found.user_id == "webui"
    assert resolve_identity({"X-User-Id": "h"}, {"user": "b"}, SETTINGS).user_id == "h"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"user": "u1"}, "u1"),
        ({"safety_identifier": "s1"}, "s1"),
        ({"metadata": {"user_id": "m1"}}, "m1"),
        ({"user": "", "safety_identifier": "s2"}, "s2"),
        ({"metadata": "not a dict"}, None),
        ({}, None),
    ],
)
def test_body_fallbacks(body: dict, expected: str | None) -> None:
    identity = resolve_identity({}, body, SETTINGS)
    assert identity.user_id == expected
    assert identity.reads == (expected is not None)


def test_modes_agent_and_session() -> None:
    headers = {"X-User-Id": "u", "X-Memory-Mode": "READ", "X-Agent-Id": "a", "X-Session-Id": "s"}
    identity = resolve_identity(headers, {}, SETTINGS)
    assert (identity.mode, identity.agent_id, identity.session_id) == ("read", "a", "s")
    assert identity.reads and not identity.writes
    write = resolve_identity({"X-User-Id": "u", "X-Memory-Mode": "write"}, {}, SETTINGS)
    assert write.writes and not write.reads
    off = resolve_identity({"X-User-Id": "u", "X-Memory-Mode": "off"}, {}, SETTINGS)
    assert not off.reads and not off.writes


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({"X-User-Id": "  "}, {}, InvalidHeader),
        ({"X-User-Id": "x" * 257}, {}, InvalidHeader),
        ({"X-User-Id": "bad\x07id"}, {}, InvalidHeader),
        ({}, {"user": "line\nbreak"}, InvalidRequest),
        ({"X-User-Id": "u", "X-Memory-Mode": "sometimes"}, {}, InvalidHeader),
        ({"X-User-Id": "u", "X-Agent-Id": ""}, {}, InvalidHeader),
    ],
)
def test_invalid_ids_and_modes_are_400s(headers: dict, body: dict, error: type) -> None:
    with pytest.raises(error) as caught:
        resolve_identity(headers, body, SETTINGS)
    assert caught.value.status_code == 400 and caught.value.message


def test_unicode_ids_are_accepted() -> None:
    assert resolve_identity({}, {"user": "Zoë-🙂-مرحبا"}, SETTINGS).user_id == "Zoë-🙂-مرحبا"


def test_utf8_header_ids_are_the_same_user_as_in_the_body() -> None:
    # Servers hand header bytes over decoded as latin-1.
    as_received = "zoë-🙂".encode().decode("latin-1")
    from_header = resolve_identity({"X-User-Id": as_received}, {}, SETTINGS).user_id
    assert from_header == resolve_identity({}, {"user": "zoë-🙂"}, SETTINGS).user_id
