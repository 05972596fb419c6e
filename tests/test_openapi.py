"""The OpenAPI document says what the server does: every status it answers, the constraints
it enforces, no internal fields; and the HTTP details around it (Allow on 405, an empty
import, created_at on POST /v1/memories)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from http_checks import assert_openai_error
from openapi_spec_validator import validate
from servers import ThreadedServer

BODY_OPS = {("/v1/memories", "post"), ("/v1/memories/import", "post"),
            ("/v1/memories/search", "post"), ("/v1/memories/{memory_id}", "patch")}


@pytest.fixture
def proxy(start_proxy: Callable[..., ThreadedServer]) -> ThreadedServer:
    return start_proxy()


def document(proxy: ThreadedServer) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(proxy.base_url + "/openapi.json").json()
    validate(found)  # type: ignore[arg-type]
    return found


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in ("get", "post", "patch", "delete")]


def test_every_status_the_server_answers_is_documented(proxy: ThreadedServer) -> None:
    doc = document(proxy)
    for path, method, op in operations(doc):
        if not path.startswith("/v1/memories") and not path.startswith("/v1/users"):
            continue
        statuses = set(op["responses"])
        assert {"400", "401", "403", "404", "405", "500", "503"} <= statuses, (path, method)
        if (path, method) in BODY_OPS:
            assert "413" in statuses, (path, method)
    assert "409" in doc["paths"]["/v1/memories/import"]["post"]["responses"]
    assert {"502", "504"} <= set(doc["paths"]["/v1/memories"]["post"]["responses"])
    assert {"/v1/chat/completions", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_enforced_constraints_are_in_the_schema(proxy: ThreadedServer) -> None:
    schemas = document(proxy)["components"]["schemas"]
    create = schemas["CreateMemories"]
    assert create["properties"]["user_id"]["minLength"] == 1
    assert create["properties"]["user_id"]["maxLength"] == 256
    assert create["properties"]["tenant"]["minLength"] == 1
    assert {"required": ["text"]} in create["oneOf"] and {"required": ["messages"]} in create[
        "oneOf"]
    assert "created_at" in create["properties"]
    pattern = re.compile(create["properties"]["user_id"]["pattern"])
    assert pattern.match("team/alice") and pattern.match("Zoë 🙂")
    for refused in (" ", "a\x00", "a\u200b", "a\u2028", "\ud800", "a\ufeff"):
        assert not pattern.match(refused), repr(refused)
    assert create["properties"]["agent_id"]["type"] == ["string", "null"]  # null: not given
    assert create["properties"]["messages"]["contains"]["properties"]["role"] == {
        "const": "user"}
    patch = schemas["PatchMemory"]
    assert patch["minProperties"] == 1 and patch["additionalProperties"] is False
    assert "owner" not in schemas["Memory"]["properties"]


def test_memories_carry_no_internal_owner_field(proxy: ThreadedServer) -> None:
    api = httpx.Client(base_url=proxy.base_url)
    made = api.post("/v1/memories", json={"user_id": "u", "text": "likes tea", "infer": False})
    [memory] = made.json()["data"]
    assert "owner" not in memory
    assert "owner" not in api.get(f"/v1/memories/{memory['id']}").json()
    assert all("owner" not in m for m in api.get("/v1/memories",
                                                 params={"user_id": "u"}).json()["data"])
    exported = [json.loads(line) for line in api.get("/v1/users/u/export").text.splitlines()]
    assert exported and all("owner" not in record for record in exported)


def test_an_import_without_records_is_400(proxy: ThreadedServer) -> None:
    for body in (b"", b"\n\n", b"[]"):
        response = httpx.post(proxy.base_url + "/v1/memories/import", content=body)
        assert_openai_error(response, 400)
        assert "no records" in response.json()["error"]["message"]


def test_post_memories_keeps_a_given_created_at(proxy: ThreadedServer) -> None:
    api = httpx.Client(base_url=proxy.base_url)
    made = api.post("/v1/memories", json={"user_id": "u", "text": "moved to Oslo",
                                          "infer": False, "created_at": "2021-05-01T12:00:00Z"})
    assert made.status_code == 201, made.text
    assert made.json()["data"][0]["created_at"] == 1619870400.0
    stored = api.get(f"/v1/memories/{made.json()['data'][0]['id']}").json()
    assert stored["created_at"] == 1619870400.0
    assert_openai_error(api.post("/v1/memories", json={
        "user_id": "u", "text": "x", "infer": False, "created_at": "yesterday"}), 400)


def test_an_integral_float_is_an_integer_limit(proxy: ThreadedServer) -> None:
    found = httpx.post(proxy.base_url + "/v1/memories/search",
                       json={"user_id": "u", "query": "tea", "limit": 10.0})
    assert found.status_code == 200, found.text
    assert_openai_error(httpx.post(proxy.base_url + "/v1/memories/search",
                                   json={"user_id": "u", "query": "tea", "limit": 2.5}), 400)
