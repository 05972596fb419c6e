"""The models' answers, parsed and repaired: candidate facts, and one relation word.

Near misses are accepted where the meaning is unambiguous (a bare list of facts, facts under
"operations" as an older prompt asked, a bare relation word); anything else is
``ExtractionFailed`` and the call is retried. Nothing here decides what is stored: the
operations built from these answers are checked in proxy/extraction/guards.py.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

OpName = Literal["add", "update", "supersede", "delete"]
Relation = Literal["same", "replaces", "more_detail", "separate"]


class ExtractionFailed(Exception):
    pass


class FactList(BaseModel):
    facts: list[str]


class RelationAnswer(BaseModel):
    relation: Relation


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PY_LITERALS = {"None": "null", "True": "true", "False": "false"}


def repair_json(content: str) -> str:
    """Best-effort fixes for what models wrap around or break in JSON."""
    text = _FENCE.sub("", content.strip())
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if start >= 0 and end > start:
        text = text[start : end + 1]
    text = _TRAILING_COMMA.sub(r"\1", text)
    return re.sub(r"\b(None|True|False)\b", lambda m: _PY_LITERALS[m.group(1)], text)


def _candidates(content: str) -> list[Any]:
    parsed: list[Any] = []
    for candidate in (content, repair_json(content)):
        try:
            parsed.append(json.loads(candidate))
        except ValueError:
            continue
    return parsed


def _fact_shape(data: Any) -> Any:
    if isinstance(data, list):
        data = {"facts": data}
    if isinstance(data, dict) and "facts" not in data and isinstance(data.get("operations"), list):
        data = {"facts": [op.get("text") for op in data["operations"] if isinstance(op, dict)]}
    if isinstance(data, dict) and isinstance(data.get("facts"), list):
        # {"text": …} items, and nulls a model puts for "nothing", are near misses too.
        facts = [f.get("text") if isinstance(f, dict) else f for f in data["facts"]]
        return {"facts": [f for f in facts if f is not None]}
    return data


def parse_facts(content: str) -> list[str]:
    error: Exception | None = None
    for data in _candidates(content):
        try:
            return FactList.model_validate(_fact_shape(data)).facts
        except ValidationError as exc:
            error = exc
    raise ExtractionFailed(f"no valid facts JSON ({type(error).__name__}): {content[:200]!r}")


def parse_relation(content: str) -> Relation:
    error: Exception | None = None
    for data in _candidates(content) or [content.strip().strip('"').casefold()]:
        try:
            if isinstance(data, str):
                data = {"relation": data}
            return RelationAnswer.model_validate(data).relation
        except ValidationError as exc:
            error = exc
    raise ExtractionFailed(f"no valid relation JSON ({type(error).__name__}): {content[:200]!r}")
