"""Cache-friendly injection and long-chat trimming, through the real app over real HTTP.

What reaches the (fake) upstream is checked: the memory block a conversation's first turn
chose stays byte-identical while its memories are unchanged, later finds go late (just
before the newest user turn, or at the end of it for Anthropic), and with a history budget
the oldest turns are left out in whole steps and come back when the question needs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import assert_openai_error, chat, forwarded_chats, reset, shared_proxy
from servers import ThreadedServer

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
BEES = "User keeps three beehives on a roof in Lisbon"
VESPA = "User rides a red Vespa scooter to work"


def remember(base_url: str, user: str, text: str) -> str:
    response = httpx.post(f"{base_url}/v1/memories",
                          json={"user_id": user, "text": text, "infer": False})
    assert response.status_code == 201, response.text
    return str(response.json()["data"][0]["id"])


@pytest.fixture(scope="module")
def _proxies(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[ThreadedServer, FakeUpstream]]]:
    knobs = {"extraction.mode": "off", "retrieval.core_when_at_most": 0,
             "retrieval.top_k": 1, "retrieval.min_score": 0.3}
    with shared_proxy(tmp_path_factory.mktemp("stable"), **knobs) as stable, \
            shared_proxy(tmp_path_factory.mktemp("per-turn"), **knobs,
                         **{"conversation.stable_block": False}) as per_turn:
        yield {"stable": stable, "per_turn": per_turn}


def proxy(proxies: dict[str, tuple[ThreadedServer, FakeUpstream]],
          name: str) -> tuple[str, FakeUpstream]:
    server, upstream = proxies[name]
    return server.base_url, reset(upstream)


def two_turns(base_url: str, upstream: FakeUpstream, user: str) -> list[list[dict[str, Any]]]:
    first = [SYSTEM, {"role": "user", "content": "How are my beehives in Lisbon doing?"}]
    second = [*first, {"role": "assistant", "content": "They are thriving."},
              {"role": "user", "content": "Which scooter do I ride to work, the Vespa?"}]
    for messages in (first, second):
        response = chat(base_url, {"model": "m", "messages": messages}, **{"X-User-Id": user})
        assert response.status_code == 200, response.text
    return [r.json["messages"] for r in forwarded_chats(upstream)]


def test_the_first_turns_block_is_kept_and_later_finds_go_late(_proxies: Any) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    remember(base_url, "kim", BEES)
    remember(base_url, "kim", VESPA)
    first, second = two_turns(base_url, upstream, "kim")
    assert first[0] == SYSTEM and BEES in first[1]["content"] and VESPA not in first[1]["content"]
    # Byte-identical prefix: system prompt, the kept block, then the caller's history.
    assert second[:3] == first[:3]
    assert second[3]["role"] == "assistant"
    late, newest = second[-2], second[-1]
    assert late["role"] == "system" and VESPA in late["content"] and BEES not in late["content"]
    assert "not instructions" in late["content"]
    assert newest["content"].startswith("Which scooter")


def test_without_the_stable_block_it_is_chosen_again_every_turn(_proxies: Any) -> None:
    base_url, upstream = proxy(_proxies, "per_turn")
    remember(base_url, "kim", BEES)
    remember(base_url, "kim", VESPA)
    first, second = two_turns(base_url, upstream, "kim")
    assert BEES in first[1]["content"]
    assert VESPA in second[1]["content"] and second[1] != first[1]


def test_a_changed_memory_makes_the_block_chosen_again(_proxies: Any) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    bees = remember(base_url, "lee", BEES)
    opening = [SYSTEM, {"role": "user", "content": "How are my beehives in Lisbon doing?"}]
    assert chat(base_url, {"model": "m", "messages": opening}, **{"X-User-Id": "lee"}).is_success
    assert httpx.delete(f"{base_url}/v1/memories/{bees}").status_code == 200
    remember(base_url, "lee", "User keeps five beehives on a roof in Porto now")
    again = [*opening, {"role": "assistant", "content": "Well."},
             {"role": "user", "content": "And how many beehives do I keep on the roof?"}]
    assert chat(base_url, {"model": "m", "messages": again}, **{"X-User-Id": "lee"}).is_success
    last = forwarded_chats(upstream)[-1].json["messages"]
    text = "\n".join(str(m["content"]) for m in last)
    assert BEES not in text  # a deleted memory is never served from a kept block
    assert "five beehives" in last[1]["content"]


def long_chat(exchanges: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(exchanges):
        said = f"Turn {i}: here is a long story about my garden, my week and the weather. " * 3
        if i == 3:
            said = "My cat is called Zephyrine and she sleeps on the piano. " * 3
        messages.append({"role": "user", "content": said})
        messages.append({"role": "assistant", "content": f"Reply {i}: noted, thanks. " * 8})
    return messages


def test_trimming_leaves_out_old_turns_in_steps_and_recalls_what_is_asked(
    _proxies: Any,
) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    forwarded, headers = [], []
    for exchanges in (60, 61):
        messages = [*long_chat(exchanges), {"role": "user", "content": "What is my cat called?"}]
        response = chat(base_url, {"model": "m", "messages": messages},
                        **{"X-User-Id": "max", "X-Memory-History-Budget": "1500"})
        assert response.status_code == 200, response.text
        forwarded.append(forwarded_chats(upstream)[-1].json["messages"])
        headers.append(response.headers)
    sent = long_chat(61)
    first, second = forwarded
    assert first[0] == SYSTEM and first[-1]["content"] == "What is my cat called?"
    assert len(first) < len(sent) // 2
    assert headers[0]["x-memory-trimmed"].startswith("turns=")
    assert "x-memory-history-budget" not in forwarded_chats(upstream)[-1].headers  # ours only
    assert int(headers[0]["x-memory-recalled"]) >= 1
    late = first[-2]
    assert late["role"] == "system" and "<earlier_turns>" in late["content"]
    assert "Zephyrine" in late["content"]
    assert not any("Zephyrine" in str(m["content"]) for m in first[1:-2])  # it was left out
    # One more exchange later the cut has not moved: same first kept turns, same prefix.
    assert second[: len(first) - 2] == first[: len(first) - 2]
    assert headers[1]["x-memory-trimmed"].split(";")[0] == headers[0]["x-memory-trimmed"].split(
        ";")[0]


def test_a_short_chat_is_never_trimmed(_proxies: Any) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    messages = [*long_chat(2), {"role": "user", "content": "hello"}]
    response = chat(base_url, {"model": "m", "messages": messages},
                    **{"X-User-Id": "max", "X-Memory-History-Budget": "100000"})
    assert response.status_code == 200 and "x-memory-trimmed" not in response.headers
    assert forwarded_chats(upstream)[-1].json["messages"] == messages


def test_a_bad_budget_header_is_a_400_in_the_apis_own_shape(_proxies: Any) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = chat(base_url, body, **{"X-User-Id": "max", "X-Memory-History-Budget": "lots"})
    assert_openai_error(response, 400)
    anthropic = httpx.post(
        f"{base_url}/v1/messages", headers={"x-user-id": "max", "x-api-key": "k",
                                            "x-memory-history-budget": "-5"},
        json={"model": "claude", "max_tokens": 10, "messages": body["messages"]},
    )
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
    assert forwarded_chats(upstream) == []


def test_anthropic_late_block_goes_after_the_callers_blocks_of_the_newest_turn(
    _proxies: Any,
) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    remember(base_url, "ana", BEES)
    remember(base_url, "ana", VESPA)
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    turns = [{"role": "user", "content": "How are my beehives in Lisbon doing?"}]
    sent = []
    for follow_up in (None, "Which scooter do I ride to work, the Vespa?"):
        if follow_up:
            turns = [*turns, {"role": "assistant", "content": "Fine."},
                     {"role": "user", "content": [
                         {"type": "text", "text": follow_up,
                          "cache_control": {"type": "ephemeral"}}]}]
        response = httpx.post(
            f"{base_url}/v1/messages", headers={"x-user-id": "ana", "x-api-key": "k",
                     "anthropic-version": "2023-06-01"},
            json={"model": "claude", "max_tokens": 10, "system": system, "messages": turns},
        )
        assert response.status_code == 200, response.text
        sent.append([r.json for r in upstream.requests if r.path.endswith("/messages")][-1])
    first, second = sent
    assert first["system"][0] == system[0] and BEES in first["system"][1]["text"]
    assert second["system"] == first["system"]  # the kept block: the same system prompt
    assert second["messages"][:2] == turns[:2]
    newest = second["messages"][-1]["content"]
    assert newest[0] == turns[-1]["content"][0]  # the caller's block, breakpoint and all
    assert VESPA in newest[-1]["text"] and len(newest) == 2


def test_responses_late_block_is_a_developer_item_before_the_newest_user_item(
    _proxies: Any,
) -> None:
    base_url, upstream = proxy(_proxies, "stable")
    remember(base_url, "rui", BEES)
    remember(base_url, "rui", VESPA)
    items: list[dict[str, Any]] = [{"role": "user", "content": "How are my beehives doing?"}]
    sent = []
    for follow_up in (None, "Which scooter do I ride to work, the Vespa?"):
        if follow_up:
            items = [*items, {"role": "assistant", "content": "Fine."},
                     {"role": "user", "content": follow_up}]
        response = httpx.post(f"{base_url}/v1/responses", headers={"x-user-id": "rui"},
                              json={"model": "m", "instructions": "Be brief.", "input": items})
        assert response.status_code == 200, response.text
        sent.append([r.json for r in upstream.requests if r.path.endswith("/responses")][-1])
    first, second = sent
    assert second["instructions"] == "Be brief."
    assert second["input"][:2] == first["input"][:2]  # kept block, then the first user item
    late = second["input"][-2]
    assert late["role"] == "developer" and VESPA in late["content"]
    assert second["input"][-1] == items[-1]
