"""Reconciliation: one structured call → add/update/supersede/delete, applied idempotently."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream

from proxy.config import Settings
from proxy.extraction import Extractor
from proxy.identity import Identity
from proxy.jobs import ExtractionJob
from proxy.operations import Operation, resolve
from proxy.prompts import extraction_user_prompt
from proxy.secrets_filter import scrub_fact
from proxy.store import ChromaStore, Memory

pytestmark = pytest.mark.anyio


def numbered(body: dict[str, Any]) -> dict[str, int]:
    """The memories the model was shown: text → its number."""
    prompt = body["messages"][1]["content"]
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"^\[(\d+)\] (.*) \(since [\d-]+\)$", prompt, re.MULTILINE)}


def find(shown: dict[str, int], word: str) -> int:
    return next(n for text, n in shown.items() if word in text)


@pytest.fixture
def llm(settings: Settings, tmp_path: Path) -> tuple[Extractor, ChromaStore]:
    settings.extraction.mode = "llm"
    settings.extraction.retry_backoff_seconds = 0
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path / "data", embedder.dimension)
    seed = ["User lives in Berlin", "User likes tea", "User has a dog called Rex"]
    store.add([Memory("u1", t, created_at=1_700_000_000) for t in seed], embedder.embed(seed))
    return Extractor(settings, embedder, store), store


def job(text: str, job_id: int = 7) -> ExtractionJob:
    return ExtractionJob(Identity("u1", session_id="s"), [text], "OK.", "gpt-test",
                         api_key="sk-c", created_at=1_717_200_000.0, exchange_hash="h" + text,
                         id=job_id)


def test_prompt_shows_numbered_memories_message_time_and_turns() -> None:
    prompt = extraction_user_prompt(
        ["I moved to Paris last week"], "Nice!", [(1, "User lives in Berlin", 1_700_000_000)],
        1_717_200_000,
    )
    assert "Message time: 2024-06-01 00:00 UTC" in prompt
    assert "[1] User lives in Berlin (since 2023-11-14)" in prompt
    assert "user: I moved to Paris last week" in prompt and "assistant: Nice!" in prompt


def test_numbers_map_back_and_unusable_operations_drop() -> None:
    shown = {1: "id-berlin", 2: "id-tea"}
    ops = [
        Operation(op="supersede", id=1, text="User lives in Paris"),
        Operation(op="update", id=1, text="second change of the same memory"),  # dropped
        Operation(op="delete", id=9),  # a number never shown
        Operation(op="add", text="User's password is hunter2"),  # a secret
        Operation(op="add", text="  "),
        Operation(op="none"),
        Operation(op="update", id=2, text="User likes green tea"),
    ]
    assert resolve(ops, shown) == [
        {"op": "supersede", "id": "id-berlin", "text": "User lives in Paris"},
        {"op": "update", "id": "id-tea", "text": "User likes green tea"},
    ]


def test_secret_filter_drops_or_redacts_whatever_the_model_says() -> None:
    assert scrub_fact("User's OpenAI API key is sk-proj-abcdefghijklmnop1234") is None
    assert scrub_fact("User's password is hunter2") is None
    assert scrub_fact("User's card number is 4111 1111 1111 1111") is None
    assert scrub_fact("User paid with 4111-1111-1111-1111 at IKEA") == (
        "User paid with [redacted] at IKEA")
    assert scrub_fact("User deploys with AKIAIOSFODNN7EXAMPLE to Fly.io") == (
        "User deploys with [redacted] to Fly.io")
    assert scrub_fact("User has 2 kids born 2019 and 2021") == "User has 2 kids born 2019 and 2021"


async def test_operations_apply_with_history_and_a_replay_changes_nothing(
    llm: tuple[Extractor, ChromaStore], upstream: FakeUpstream
) -> None:
    extractor, store = llm

    def decide(body: dict[str, Any]) -> list[dict[str, Any]]:
        shown = numbered(body)
        return [
            {"op": "supersede", "id": find(shown, "Berlin"), "text": "User lives in Paris"},
            {"op": "update", "id": find(shown, "tea"), "text": "User likes green tea"},
            {"op": "delete", "id": find(shown, "dog"), "text": None},
            {"op": "add", "id": None, "text": "User's bank PIN is 1234"},
            {"op": "add", "id": None, "text": "User works at Acme"},
        ]

    upstream.extract_operations = decide
    j = job("I moved to Paris, I drink green tea now, forget my dog. I work at Acme.")
    result = await extractor.extract(j)
    assert [op["op"] for op in result.operations] == ["supersede", "update", "delete", "add"]
    await extractor.apply(j, result)
    current = sorted(m.text for m in store.list_user("u1", 10))
    assert current == ["User likes green tea", "User lives in Paris", "User works at Acme"]
    everything = store.all_memories("u1")
    berlin = next(m for m in everything if m.text == "User lives in Berlin")
    paris = next(m for m in everything if m.text == "User lives in Paris")
    assert berlin.superseded_by == paris.id and berlin.valid_to is not None
    events = [(e.event, e.old_text, e.new_text, e.actor)
              for e in store.history.of_memory(berlin.id)]
    assert events[-1] == ("SUPERSEDE", "User lives in Berlin", "User lives in Paris", "job:7")
    rows = len(store.history.of_owner("default", "u1"))

    # The saved result applied again (kill -9 after some writes): nothing changes twice.
    await extractor.apply(j, type(result).from_json(result.to_json()))
    assert len(store.history.of_owner("default", "u1")) == rows
    assert len(store.all_memories("u1")) == len(everything)
    assert extractor.usage["llm_calls"] == 1 and extractor.usage["exchanges"] == 1


async def test_schema_rejected_then_malformed_then_valid(
    llm: tuple[Extractor, ChromaStore], upstream: FakeUpstream
) -> None:
    extractor, store = llm
    upstream.errors.append((400, {"error": {"message": "json_schema not supported",
                                            "type": "invalid_request_error", "code": None}}, {}))
    upstream.structured_replies += [
        "Sure! {\"operations\": [{\"op\": \"add\", \"id\": null, \"text\": \"User ",  # cut off
        '```json\n{"operations": [{"op": "add", "id": null, "text": "User plays chess"},]}\n```',
    ]
    stored = await extractor.process(job("I play chess."))
    assert [m.text for m in stored] == ["User plays chess"]
    calls = upstream.extraction_requests()
    assert [c.json["response_format"]["type"] for c in calls] == [
        "json_schema", "json_object", "json_object"]
    assert "JSON schema" in calls[1].json["messages"][-1]["content"]  # the reminder
    assert "could not be used" in calls[2].json["messages"][-1]["content"]
    assert json.loads(upstream.requests[0].body)["response_format"]["json_schema"]["strict"]
