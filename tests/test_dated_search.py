"""A memory's own date is searchable through the memory API, however the question writes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import sdk
from servers import ThreadedServer

from proxy.config import Settings

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


def store_with_older_days(client: httpx.Client, told: dict[float, str], day: datetime) -> None:
    """``told`` (time → text) for user u, and a memory on each of 20 days long before
    ``day`` whose words are closer to the questions asked."""
    older = {(day - timedelta(days=40 + n)).timestamp():
             f"What I did: I spent the day in the library, reading on {note}"
             for n, note in enumerate(NOTES)}
    for created_at, text in {**told, **older}.items():
        response = client.post("/v1/memories", json={
            "user_id": "u", "text": text, "infer": False, "created_at": created_at,
        })
        assert response.status_code == 201, response.text


def test_a_relative_time_is_read_against_today_in_search_explain_and_chat(
    start_proxy: Callable[..., ThreadedServer], real_embedder: Any, upstream: FakeUpstream,
) -> None:
    """"last week", "yesterday": the memories of those days lead (the real model), the
    explanation says which days were read, and the chat's model is told today's date."""
    proxy = start_proxy(embedder=real_embedder)
    now = datetime.now(timezone.utc)
    today = now.replace(hour=12, minute=0, second=0, microsecond=0)
    last_week = today - timedelta(days=today.weekday() + 7 - 2)  # Wednesday of last week
    yesterday = today - timedelta(days=1)
    told = {last_week.timestamp(): "Went kayaking on the lake with Sam",
            yesterday.timestamp(): "Baked sourdough bread for the neighbours"}
    with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
        store_with_older_days(client, told, today)

        def first(query: str) -> str:
            found = client.post("/v1/memories/search", json={
                "user_id": "u", "query": query, "limit": 3}).json()["data"]
            return found[0]["memory"]

        assert first("What did I do last week?") == "Went kayaking on the lake with Sam"
        assert first("What did I do yesterday?") == "Baked sourdough bread for the neighbours"
        assert first("What did I do?") != "Baked sourdough bread for the neighbours"
        explained = client.post("/v1/memories/explain", json={
            "user_id": "u", "message": "What did I do yesterday?"}).json()
    assert explained["time_asked"] == {"dates_first": True, "spans": [{
        "from": yesterday.strftime("%Y-%m-%d"), "to": yesterday.strftime("%Y-%m-%d"),
        "said": "yesterday"}]}
    assert explained["injected"][0] == next(
        c["memory"]["id"] for c in explained["candidates"]
        if c["memory"]["memory"].startswith("Baked sourdough"))

    client = sdk(proxy.base_url + "/v1")
    for question, dated in (("What did I do yesterday?", True),
                            ("What bread did I bake for the neighbours?", False)):
        upstream.clear()
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}],
            extra_headers={"X-User-Id": "u"})
        [request] = upstream.chat_requests()
        sent = json.dumps(request.json["messages"])
        assert "Baked sourdough bread for the neighbours" in sent
        assert (f"Today is {today.strftime('%A, %Y-%m-%d')} (UTC)." in sent) is dated, sent


def test_days_are_the_configured_zones_in_search_and_chat(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], real_embedder: Any,
    upstream: FakeUpstream,
) -> None:
    """retrieval.timezone: Kiritimati is UTC+14. Its first minute of today is yesterday in
    UTC; its yesterday noon is two days ago in UTC. Read in the zone, "yesterday" is the
    noon one, the block dates memories in the zone, and the model is told the zone's date."""
    zone = ZoneInfo("Pacific/Kiritimati")
    settings.retrieval.timezone = "Pacific/Kiritimati"
    proxy = start_proxy(settings, embedder=real_embedder)
    local_midnight = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday_noon = local_midnight - timedelta(hours=12)
    told = {local_midnight.timestamp() + 30: "Baked sourdough bread for the neighbours",
            yesterday_noon.timestamp(): "Went kayaking on the lake with Sam"}
    with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
        store_with_older_days(client, told, local_midnight)
        found = client.post("/v1/memories/search", json={
            "user_id": "u", "query": "What did I do yesterday?", "limit": 3}).json()["data"]
        assert found[0]["memory"] == "Went kayaking on the lake with Sam"
    sdk(proxy.base_url + "/v1").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What did I do yesterday?"}],
        extra_headers={"X-User-Id": "u"})
    [request] = upstream.chat_requests()
    sent = json.dumps(request.json["messages"])
    assert f"- [{yesterday_noon:%Y-%m-%d}] Went kayaking on the lake with Sam" in sent
    assert f"Today is {local_midnight:%A, %Y-%m-%d} (Pacific/Kiritimati)." in sent
