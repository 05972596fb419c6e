from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream

from proxy.config import Settings
from proxy.extraction.extractor import ExtractionFailed, Extractor
from proxy.extraction.jobs import ExtractionJob
from proxy.extraction.operations import parse_facts, parse_relation
from proxy.gateway.identity import Identity
from proxy.memory.store import ChromaStore, Memory

pytestmark = pytest.mark.anyio


def make(settings: Settings, tmp_path: Path) -> tuple[Extractor, ChromaStore]:
    embedder = HashingEmbedder()
    store = ChromaStore(settings.store, tmp_path / "data", embedder.dimension)
    return Extractor(settings, embedder, store), store


def job(user_text: str, user: str = "u1", key: str | None = "sk-caller") -> ExtractionJob:
    return ExtractionJob(
        identity=Identity(user, agent_id="bot", session_id="s1"),
        user_texts=[user_text], assistant_text="Sounds good.", model="gpt-test", api_key=key,
    )


def test_answers_are_repaired_and_garbage_is_rejected() -> None:
    assert parse_facts('{"facts": ["User likes tea"]}') == ["User likes tea"]
    assert parse_facts('```json\n{"facts": ["A", "B",]}\n```') == ["A", "B"]
    assert parse_facts('["A"]') == ["A"]  # a bare list
    assert parse_facts('{"facts": [{"text": "A"}, null]}') == ["A"]
    # The older operations shape: its texts are candidates like any other (checked later).
    assert parse_facts('{"operations": [{"op": "delete", "id": 2, "text": None}, '
                       '{"op": "add", "id": null, "text": "B"}]}') == ["B"]
    for bad in ("", "no json", '{"facts": "not a list"}', '{"other": []}', '{"facts": [1]}'):
        with pytest.raises(ExtractionFailed):
            parse_facts(bad)
    assert parse_relation('{"relation": "replaces"}') == "replaces"
    assert parse_relation('"same"') == "same" and parse_relation("separate") == "separate"
    for bad in ("", '{"relation": "delete everything"}', '{"op": "delete"}', "[1]"):
        with pytest.raises(ExtractionFailed):
            parse_relation(bad)


async def test_llm_mode_stores_atomic_facts_via_the_upstream_with_callers_key(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings.extraction.mode = "llm"
    extractor, store = make(settings, tmp_path)
    text = "I'm a data engineer in Lisbon. My dog is called Tofu. Nice weather today!"
    stored = await extractor.process(job(text))
    assert sorted(m.text for m in stored) == [
        "User is a data engineer in Lisbon", "User's dog is called Tofu",
    ]
    assert {(m.agent_id, m.session_id, m.source) for m in stored} == {("bot", "s1", "llm")}
    call = upstream.extraction_requests()[0]
    assert call.headers["authorization"] == "Bearer sk-caller"
    assert call.json["model"] == "gpt-test"
    assert call.json["response_format"]["json_schema"]["strict"] is True
    prompt = call.json["messages"][1]["content"]
    # Only the user's statements: no assistant reply, no stored memories to copy back.
    assert "user: I'm a data engineer" in prompt and "Sounds good" not in prompt

    # The same facts again are exact duplicates of stored memories: nothing new is stored,
    # and the stored memories never appear in a prompt.
    upstream.clear()
    assert await extractor.process(job(text)) == []
    shown = " ".join(m["content"] for m in upstream.extraction_requests()[0].json["messages"])
    assert "User is a data engineer" not in shown
    assert store.count_user("u1") == 2
    assert extractor.guard_events["rejected_duplicate"] == 2


async def test_malformed_json_falls_back_to_json_object_then_fails_loudly(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings.extraction.mode = "llm"
    extractor, store = make(settings, tmp_path)
    settings.extraction.retry_backoff_seconds = 0
    upstream.structured_replies += ["{not json", json.dumps({"facts": ["User plays chess"]})]
    stored = await extractor.process(job("I play chess."))
    assert [m.text for m in stored] == ["User plays chess"]
    formats = [r.json["response_format"]["type"] for r in upstream.extraction_requests()]
    assert formats == ["json_schema", "json_object"]

    upstream.structured_replies += ["nope", "still nope", "never"]
    with pytest.raises(ExtractionFailed):
        await extractor.process(job("I play go."))
    assert store.count_user("u1") == 1


async def test_raw_mode_stores_user_text_verbatim_and_off_stores_nothing(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    extractor, store = make(settings, tmp_path)
    text = "I keep bees 🙂 مرحبا \x00 end"
    stored = await extractor.process(job(text))
    assert [m.text for m in stored] == [text]  # intact: emoji, RTL, NUL
    assert upstream.extraction_requests() == []
    settings.extraction.mode = "off"
    assert await extractor.process(job("I like tea")) == []
    assert [m.text for m in store.list_user("u1", 10)] == [text]


async def test_extraction_model_setting_routes_the_call(
    settings: Settings, upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings.extraction.mode = "llm"
    settings.extraction.model = "small-extractor"
    extractor, _ = make(settings, tmp_path)
    await extractor.process(job("I am vegan."))
    assert upstream.extraction_requests()[0].json["model"] == "small-extractor"


def test_memory_of_another_user_is_never_a_duplicate(settings: Settings, tmp_path: Path) -> None:
    extractor, store = make(settings, tmp_path)
    embedder = HashingEmbedder()
    store.add([Memory("other", "I like tea")], embedder.embed(["I like tea"]))
    import anyio

    stored = anyio.run(extractor.process, job("I like tea"))
    assert [m.user_id for m in stored] == ["u1"]
