"""Inputs that used to make the memory API answer 500 (or a wrong 503): each is a 400 that
says what is wrong, and nothing is stored for it."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from http_checks import CHAT_PATH, assert_openai_error
from servers import ThreadedServer


@pytest.fixture
def api(start_proxy: Callable[..., ThreadedServer]) -> httpx.Client:
    return httpx.Client(base_url=start_proxy().base_url, timeout=30)


def refused(response: httpx.Response, *words: str) -> None:
    assert_openai_error(response, 400)
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message


def nothing_stored(api: httpx.Client, user: str = "u") -> None:
    listed = api.get("/v1/memories", params={"user_id": user})
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text


def test_an_import_body_that_is_not_utf8_is_400(api: httpx.Client) -> None:
    body = '{"user_id": "u", "memory": "caf\u00e9"}'.encode("latin-1")
    refused(api.post("/v1/memories/import", content=body), "UTF-8")
    nothing_stored(api)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_imports_and_filters_are_400(api: httpx.Client, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    record = '{"user_id": "u", "memory": "x", "metadata": {"deep": %s}}'.replace("%s", nested)
    refused(api.post("/v1/memories/import", content=record), "nested too deeply")
    refused(api.post("/v1/memories/import", content=f"[{record}]"), "nested too deeply")
    if depth < 10_000:  # a longer query string is refused by the client already
        filters = '{"deep": {"$eq": %s}}'.replace("%s", nested)
        refused(api.get("/v1/memories", params={"user_id": "u", "filters": filters}),
                "nested too deeply")
    nothing_stored(api)


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "1\u00b2", "\uff15"])
def test_a_limit_of_non_ascii_digits_is_400(api: httpx.Client, limit: str) -> None:
    refused(api.get("/v1/memories", params={"user_id": "u", "limit": limit}), "'limit'")


def test_two_import_records_with_the_same_id_are_400(api: httpx.Client) -> None:
    lines = [json.dumps({"id": "m1", "user_id": "u", "memory": text}) for text in ("a", "b")]
    refused(api.post("/v1/memories/import", content="\n".join(lines)), "m1", "twice")
    nothing_stored(api)


@pytest.mark.parametrize("body", [
    '{"user_id": "bad\\ud800", "text": "likes tea", "infer": false}',
    '{"user_id": "u", "text": "likes \\udfff tea", "infer": false}',
    '{"user_id": "u", "text": "likes tea", "infer": false, "metadata": {"\\ud800": 1}}',
])
def test_lone_surrogates_in_memory_api_bodies_are_400(api: httpx.Client, body: str) -> None:
    refused(api.post("/v1/memories", content=body), "surrogate")
    refused(api.post("/v1/memories/import", content=body.replace('"text"', '"memory"')),
            "surrogate")
    nothing_stored(api)


def test_a_user_id_with_a_lone_surrogate_is_400_in_chat(api: httpx.Client) -> None:
    chat_body = '{"model": "m", "user": "bad\\ud800", "messages": [{"role": "user", ' \
        '"content": "I like tea"}]}'
    response = api.post(CHAT_PATH, content=chat_body, headers={"content-type": "application/json"})
    refused(response, "user", "surrogate")


@pytest.mark.parametrize("moment", [1.7976931348623155e308, -1, 1e12, "0001-01-01T00:00:00+14:00",
                                    "+275760-09-13"])
def test_a_time_outside_1970_to_9999_is_400(api: httpx.Client, moment: object) -> None:
    body = {"user_id": "u", "text": "likes tea", "infer": False, "created_at": moment}
    refused(api.post("/v1/memories", json=body), "created_at")
    record = {"user_id": "u", "memory": "likes tea", "created_at": moment}
    refused(api.post("/v1/memories/import", content=json.dumps(record)), "created_at")
    nothing_stored(api)


def test_an_import_record_is_checked_for_surrogates_wherever_they_hide(api: httpx.Client
                                                                       ) -> None:
    """Records are checked only when the body holds a \\ud800–\\udfff escape at all: one in
    upper case in a history row is found, naming its line, and an escaped pair is a
    character, stored as one."""
    good = json.dumps({"user_id": "u", "memory": "likes tea"})
    history = ('{"user_id": "u", "memory": "likes cake", "history": [{"event": "ADD", '
               '"created_at": 1, "old_text": null, "new_text": "x\\uDC00"}]}')
    refused(api.post("/v1/memories/import", content=f"{good}\n{history}"), "record 2",
            "surrogate")
    nothing_stored(api)
    pair = '{"user_id": "u", "memory": "likes \\ud83d\\ude00 and a literal \\\\ud800"}'
    answer = api.post("/v1/memories/import", content=pair)
    assert answer.status_code == 200, answer.text
    [stored] = api.get("/v1/memories", params={"user_id": "u"}).json()["data"]
    assert stored["memory"] == "likes \U0001f600 and a literal \\ud800"
