"""The reconciliation call's answer: memory operations, parsed, repaired, mapped back.

The model sees related memories numbered 1..n (LLMs corrupt UUIDs); ``resolve`` maps those
numbers back to memory ids and drops what cannot be applied: unknown numbers, a second
operation on the same memory, empty texts, and facts that are secrets (proxy/secrets_filter).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from proxy.secrets_filter import scrub_fact

OpName = Literal["add", "update", "supersede", "delete", "none"]
NEEDS_ID = ("update", "supersede", "delete")
NEEDS_TEXT = ("add", "update", "supersede")


class ExtractionFailed(Exception):
    pass


class Operation(BaseModel):
    op: OpName
    id: int | None = None
    text: str | None = None


class OperationList(BaseModel):
    operations: list[Operation]


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


def _shape(data: Any) -> Any:
    """Accept near-misses: a bare list of operations, or the older {"facts": [...]}."""
    if isinstance(data, list):
        return {"operations": data}
    if isinstance(data, dict) and "operations" not in data and isinstance(data.get("facts"), list):
        return {"operations": [{"op": "add", "text": f} for f in data["facts"]]}
    return data


def parse_operations(content: str) -> list[Operation]:
    """Validate the model's JSON as is, then after ``repair_json``; else ExtractionFailed."""
    error: Exception | None = None
    for candidate in (content, repair_json(content)):
        try:
            return OperationList.model_validate(_shape(json.loads(candidate))).operations
        except (ValueError, ValidationError) as exc:
            error = exc
    raise ExtractionFailed(f"no valid operations JSON ({type(error).__name__}): {content[:200]!r}")


def resolve(operations: list[Operation], shown: Mapping[int, str]) -> list[dict[str, Any]]:
    """Operations with real memory ids, ready to save in the job and apply."""
    out: list[dict[str, Any]] = []
    touched: set[str] = set()
    for operation in operations:
        if operation.op == "none":
            continue
        memory_id: str | None = None
        if operation.op in NEEDS_ID:
            memory_id = shown.get(operation.id) if operation.id is not None else None
            if memory_id is None or memory_id in touched:
                continue
        text: str | None = None
        if operation.op in NEEDS_TEXT:
            text = scrub_fact((operation.text or "").strip())
            if not text:
                continue  # empty, or a secret: the memory stays as it was
        if memory_id is not None:
            touched.add(memory_id)
        out.append({"op": operation.op, "id": memory_id, "text": text})
    return out
