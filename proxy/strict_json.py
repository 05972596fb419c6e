"""Request JSON as RFC 8259 defines it.

Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity`` (and turns ``1e999`` into
``inf``); none of them is JSON, a stored one makes every later read of the record fail, and
an upstream would reject it anyway. ``parse`` refuses them with ``InvalidJSON``, like any
other body that is not JSON (not UTF-8, nested too deeply for the parser).
"""

from __future__ import annotations

import json
import math
from typing import Any

from proxy.errors import InvalidJSON, InvalidRequest


class NonFiniteNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text} is too large for a JSON number")
    return value


def check_unicode(value: Any, what: str = "request body") -> None:
    """Refuse a lone surrogate (``"\\ud800"`` is valid JSON, not Unicode) anywhere in
    ``value``: the store cannot hold one."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} holds a lone surrogate (such as \\ud800): not valid Unicode"
        ) from exc
    except RecursionError as exc:
        raise InvalidJSON(f"{what} is nested too deeply") from exc


def parse(raw: bytes | str, what: str = "request body") -> Any:
    """The JSON value of ``raw``; ``InvalidJSON`` naming ``what`` when it is not JSON."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except NonFiniteNumber as exc:
        raise InvalidJSON(
            f"{what} is not valid JSON: {exc} (NaN and Infinity are not JSON)"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # "[[[[…" a few thousand deep exhausts the parser's stack
        raise InvalidJSON(f"{what} is nested too deeply") from exc
