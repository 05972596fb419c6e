"""What the Responses and Messages tests share: settings with both upstreams, and look-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

FACT = "I'm building this in Next.js with a Postgres backend"
STORED_FACT = FACT  # extraction mode raw: the user's statement, verbatim


def memories_of(base_url: str, user_id: str) -> list[str]:
    response = httpx.get(f"{base_url}/v1/memories", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    return [m["memory"] for m in response.json()["data"]]


def memory_rows(base_url: str, user_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/v1/memories", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def settled_jobs(base_url: str, user_id: str) -> bool:
    """No job of the user's still waiting or running (its exchange is stored or refused)."""
    response = httpx.get(f"{base_url}/v1/users/{user_id}/jobs", params={"wait": 5})
    assert response.status_code == 200, response.text
    return response.json()["pending"] == 0


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]
