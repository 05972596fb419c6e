"""Session evidence: a strong hit lifts the turns said just before and after it, in its session.

Through the memory API (memories stored with their real date and session), and the chat path
ranking exactly as the search API does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from http_checks import forwarded_chats, injected_positions
from servers import ThreadedServer

from proxy.config import Settings
from proxy.memory.ranking import lift_neighbours
from proxy.memory.retrieval import session_neighbours
from proxy.memory.store import Memory

# The skiing turn is the strong hit; its session's next turn and another session's turn say
# "snow" alike (same length, same words but one): only the session tells them apart.
TURNS = [
    ("I went skiing in January, the snow", 1_000.0, "s1"),
    ("The snow was great there", 1_060.0, "s1"),
    ("The snow was grey there", 9_000.0, "s2"),
    *((f"unrelated chat number {n}", 20_000.0 + n, "s3") for n in range(12)),
]


def with_retrieval(settings: Settings, data_dir: Path, **retrieval: Any) -> Settings:
    return settings.model_copy(update={
        "data_dir": data_dir,
        "retrieval": settings.retrieval.model_copy(update=retrieval),
        "extraction": settings.extraction.model_copy(update={"mode": "off"}),
    })


def store_turns(client: httpx.Client) -> None:
    for text, created_at, session in TURNS:
        response = client.post("/v1/memories", json={
            "user_id": "u", "text": text, "infer": False, "created_at": created_at,
            "session_id": session,
        })
        assert response.status_code == 201, response.text
        assert response.json()["data"][0]["created_at"] == created_at


def search(client: httpx.Client, query: str, limit: int = 3) -> list[str]:
    response = client.post("/v1/memories/search",
                           json={"user_id": "u", "query": query, "limit": limit})
    assert response.status_code == 200, response.text
    return [hit["memory"] for hit in response.json()["data"]]


def test_a_strong_hit_lifts_its_session_neighbour_over_an_equal_memory_elsewhere(
    start_proxy: Callable[..., ThreadedServer], settings: Settings, tmp_path: Path
) -> None:
    results = {}
    for weight in (0.0, 0.2):
        proxy = start_proxy(with_retrieval(settings, tmp_path / f"data-{weight}",
                                           neighbour_weight=weight, mmr_lambda=1.0))
        with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
            store_turns(client)
            results[weight] = search(client, "skiing snow")
    # Without the lift, the newer of the two equal memories wins the tie.
    assert results[0.0] == [TURNS[0][0], TURNS[2][0], TURNS[1][0]]
    assert results[0.2] == [TURNS[0][0], TURNS[1][0], TURNS[2][0]]


def test_the_chat_injects_what_the_search_api_ranks_first(
    start_proxy: Callable[..., ThreadedServer], settings: Settings, upstream: Any,
    tmp_path: Path,
) -> None:
    proxy = start_proxy(with_retrieval(settings, tmp_path / "data-chat", neighbour_weight=0.2,
                                       top_k=3))
    with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
        store_turns(client)
        query = "Tell me about the skiing and the snow"
        ranked = search(client, query, limit=3)
        response = client.post("/v1/chat/completions", headers={"X-User-Id": "u"}, json={
            "model": "m", "messages": [{"role": "user", "content": query}],
        })
    assert response.status_code == 200, response.text
    [request] = forwarded_chats(upstream)
    [position] = injected_positions(request.json)
    block = request.json["messages"][position]["content"]
    injected = [line.split("] ", 1)[1] for line in block.splitlines() if line.startswith("- [")]
    assert injected == ranked


def test_neighbours_are_the_turns_just_before_and_after_in_the_same_session() -> None:
    memories = [
        Memory("u", "a", created_at=1.0, session_id="s"),
        Memory("u", "x", created_at=2.0, session_id="other"),
        Memory("u", "c", created_at=3.0, session_id="s"),
        Memory("u", "b", created_at=2.0, session_id="s"),  # stored late, said second
        Memory("u", "d", created_at=4.0),  # no session: nobody's neighbour
    ]
    created = np.array([m.created_at for m in memories])
    neighbours = session_neighbours(memories, created)
    assert neighbours(3) == [0, 2]
    assert neighbours(0) == [3]
    assert neighbours(2) == [3]
    assert neighbours(1) == [] and neighbours(4) == []


def test_lift_only_from_strong_hits_onto_eligible_rows_and_back_onto_zero_to_one() -> None:
    scores = np.array([1.0, 0.5, 0.5, 0.1], dtype=np.float32)
    pairs = {0: [1], 1: [0], 2: [3], 3: [2]}
    lifted = lift_neighbours(scores, lambda i: pairs[i], 0.2, strong=1)
    assert lifted.max() <= 1.0
    assert lifted[1] > lifted[2]  # the best hit's neighbour moves ahead of its equal
    assert lifted[3] == pytest.approx(0.1 / 1.2)  # row 2 is not a strong hit: no lift
    blocked = lift_neighbours(scores, lambda i: pairs[i], 0.2, strong=1,
                              eligible=np.array([True, False, True, True]))
    assert blocked[1] == pytest.approx(0.5 / 1.2)
    assert lift_neighbours(scores, lambda i: pairs[i], 0.0, strong=1) is scores
