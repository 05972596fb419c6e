"""Choosing memories by their fields: metadata filters, list order and cursors.

A filter is a JSON object; every key must match (AND). Keys name a memory field
(``agent_id``, ``session_id``, ``source``, ``created_at``, ``updated_at``, ``valid_to``,
``superseded_by``, ``id``) or a key of the user metadata (``"metadata.topic"``, or just
``"topic"`` when it is not a field name). A value is matched for equality, or is an object of
operators::

    {"topic": "work", "priority": {"$in": [1, 2]}, "created_at": {"$gte": "2025-01-01"}}

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte``. Timestamps compare as epoch seconds and
accept ISO 8601 text. Values of different types never match a range (``"3" > 2`` is false).

Lists are ordered newest first (``created_at``, then ``id``); a cursor is the position of the
last memory of a page, so pages stay stable while memories are added.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from proxy.errors import InvalidRequest

if TYPE_CHECKING:
    from proxy.memory.store import Memory

FIELDS = frozenset(
    {"id", "agent_id", "session_id", "source", "created_at", "updated_at", "valid_to",
     "superseded_by"}
)
TIME_FIELDS = frozenset({"created_at", "updated_at", "valid_to"})
RANGE_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})
OPERATORS = RANGE_OPERATORS | {"$eq", "$ne", "$in", "$nin"}
_MISSING = object()


@dataclass(frozen=True)
class Condition:
    key: str
    in_metadata: bool
    op: str
    value: Any

    def holds(self, memory: Memory) -> bool:
        if self.in_metadata:
            actual = memory.metadata.get(self.key, _MISSING)
        else:
            actual = getattr(memory, self.key)
        if self.op == "$eq":
            return _equal(actual, self.value)
        if self.op == "$ne":
            return not _equal(actual, self.value)
        if self.op == "$in":
            return any(_equal(actual, v) for v in self.value)
        if self.op == "$nin":
            return not any(_equal(actual, v) for v in self.value)
        return _compare(actual, self.op, self.value)


def _equal(actual: Any, wanted: Any) -> bool:
    if actual is _MISSING:
        return False
    # JSON has no bool/int distinction problem to hide: True must not equal 1.
    if isinstance(actual, bool) != isinstance(wanted, bool):
        return False
    return bool(actual == wanted)


def _compare(actual: Any, op: str, wanted: Any) -> bool:
    numbers = (int, float)
    if actual is _MISSING or actual is None or isinstance(actual, bool):
        return False
    if isinstance(actual, numbers) and isinstance(wanted, numbers):
        pass
    elif not (isinstance(actual, str) and isinstance(wanted, str)):
        return False
    if op == "$gt":
        return bool(actual > wanted)
    if op == "$gte":
        return bool(actual >= wanted)
    if op == "$lt":
        return bool(actual < wanted)
    return bool(actual <= wanted)


# Epoch seconds a memory's time may take: 1970 to the end of year 9999 (what dates render).
EARLIEST, LATEST = 0.0, 253_402_300_799.0


def parse_time(value: Any, param: str) -> float:
    """Epoch seconds from a number or ISO 8601 text (UTC when no offset is given)."""
    moment = _parse_time(value, param)
    if not EARLIEST <= moment <= LATEST:
        raise InvalidRequest(
            f"'{param}' must lie between 1970-01-01 and 9999-12-31", param=param
        )
    return moment


def _parse_time(value: Any, param: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
            text = ""  # "NaN", "inf": no time, and no ISO 8601 either
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            try:
                return moment.timestamp()
            except (OverflowError, ValueError):
                pass
    raise InvalidRequest(
        f"'{param}' must be epoch seconds or an ISO 8601 timestamp", param=param
    )


def parse_filters(raw: Any, param: str = "filters") -> list[Condition]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be a JSON object", param=param)
    conditions: list[Condition] = []
    for key, spec in raw.items():
        if key == "metadata" and isinstance(spec, dict):
            for meta_key, meta_spec in spec.items():
                conditions += _conditions(f"metadata.{meta_key}", meta_spec, param)
        else:
            conditions += _conditions(str(key), spec, param)
    return conditions


def _conditions(key: str, spec: Any, param: str) -> list[Condition]:
    if key.startswith("metadata."):
        name, in_metadata = key[len("metadata."):], True
    elif key in FIELDS:
        name, in_metadata = key, False
    elif key.startswith("$"):
        raise InvalidRequest(f"unknown filter key {key!r} in '{param}'", param=param)
    else:
        name, in_metadata = key, True
    if not name:
        raise InvalidRequest(f"empty filter key in '{param}'", param=param)
    is_time = not in_metadata and name in TIME_FIELDS
    ops = spec if isinstance(spec, dict) and spec and all(
        isinstance(k, str) and k.startswith("$") for k in spec
    ) else {"$eq": spec}
    out: list[Condition] = []
    for op, value in ops.items():
        if op not in OPERATORS:
            raise InvalidRequest(
                f"unknown operator {op!r} for {key!r} in '{param}' (known: "
                f"{', '.join(sorted(OPERATORS))})", param=param,
            )
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise InvalidRequest(f"{op} for {key!r} needs an array", param=param)
            if is_time:
                value = [parse_time(v, param) for v in value]
        elif is_time and value is not None:
            value = parse_time(value, param)
        elif op in RANGE_OPERATORS and not isinstance(value, int | float | str):
            raise InvalidRequest(f"{op} for {key!r} needs a number or text", param=param)
        out.append(Condition(name, in_metadata, op, value))
    return out


def matches(memory: Memory, conditions: Iterable[Condition]) -> bool:
    return all(c.holds(memory) for c in conditions)


# -- order and cursors --------------------------------------------------------------------


def order_key(memory: Memory) -> tuple[float, str]:
    return (memory.created_at, memory.id)


def encode_cursor(memory: Memory) -> str:
    raw = json.dumps([memory.created_at, memory.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, memory_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return float(created_at), str(memory_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidRequest("'cursor' is not a cursor this API returned", param="cursor") from exc


def page(
    memories: Iterable[Memory], limit: int, cursor: str | None = None
) -> tuple[list[Memory], str | None]:
    """One page, newest first, after ``cursor``; and the cursor of the next page (or None)."""
    ordered = sorted(memories, key=order_key, reverse=True)
    if cursor:
        after = decode_cursor(cursor)
        ordered = [m for m in ordered if order_key(m) < after]
    chosen = ordered[:limit]
    more = len(ordered) > limit
    return chosen, encode_cursor(chosen[-1]) if more and chosen else None
