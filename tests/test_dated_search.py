"""A memory's own date is searchable through the memory API, however the question writes it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import httpx
import pytest
from servers import ThreadedServer

NOTES = ("amber birch cedar dune ember fjord grove heath iris juniper kelp lotus moss nettle "
         "oak pine quartz reed sage thyme").split()
DAY = datetime(2024, 1, 5, 18, 30, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("when", ["5 January 2024", "5 Jan 2024", "05.01.2024", "2024-01-05"])
def test_the_memory_of_the_day_asked_about_comes_first(
    start_proxy: Callable[..., ThreadedServer], when: str
) -> None:
    proxy = start_proxy()
    with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
        for n, note in enumerate(NOTES):
            response = client.post("/v1/memories", json={
                "user_id": "u", "text": f"I spent the day in the library, reading on {note}",
                "infer": False, "created_at": DAY + (n - 10) * 86_400,
            })
            assert response.status_code == 201, response.text
        found = client.post("/v1/memories/search", json={
            "user_id": "u", "query": f"What happened in the library on {when}?", "limit": 3,
        }).json()["data"]
    assert found[0]["memory"] == f"I spent the day in the library, reading on {NOTES[10]}"
    assert found[0]["created_at"] == DAY


def test_a_named_day_lifts_what_was_said_the_day_after(
    start_proxy: Callable[..., ThreadedServer],
) -> None:
    # What happened on 5 January is told on the 6th; the same words on days far from it.
    # The date's terms alone tie every January memory (the newest would win the tie).
    proxy = start_proxy()
    told = {DAY + 86_400: "Yesterday I played basketball with my team",
            DAY + 15 * 86_400: "I played basketball with my team tonight",
            DAY + 20 * 86_400: "Played basketball with my team again today",
            DAY - 40 * 86_400: "We played basketball with the team"}
    with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
        for created_at, text in told.items():
            response = client.post("/v1/memories", json={
                "user_id": "u", "text": text, "infer": False, "created_at": created_at,
            })
            assert response.status_code == 201, response.text
        found = client.post("/v1/memories/search", json={
            "user_id": "u", "query": "What did I play on 5 Jan 2024?", "limit": 4,
        }).json()["data"]
    assert found[0]["memory"] == "Yesterday I played basketball with my team"
