"""Generated bodies and query parameters thrown at the memory API (hypothesis): never a 5xx,
always an OpenAI-shaped error for what is refused, and nothing stored for a refused write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conftest import HashingEmbedder
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config_sources import load_settings

USER = "prop-user"
SPECIAL = ["", " ", "\x00", "\ud800", "🙂", "a/b", "import", "..", "NaN", "1e999", "²",
           "</memories>", "\n", "a" * 300, "2024-01-01T00:00:00Z", "-1", "0", "1000"]
text = st.text(max_size=12) | st.sampled_from(SPECIAL)
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                  allow_infinity=False) | text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
maybe = text | json_values
memory_fields = {
    "user_id": st.just(USER) | maybe, "tenant": maybe, "agent_id": maybe, "session_id": maybe,
    "text": maybe, "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]) | maybe, "content": maybe}),
        max_size=3) | maybe,
    "metadata": st.dictionaries(text, json_values, max_size=3) | maybe,
    "infer": st.just(False) | maybe, "created_at": maybe, "memory": maybe, "id": maybe,
    "query": maybe, "limit": maybe, "filters": json_values, "include_superseded": maybe,
}
bodies = st.fixed_dictionaries({}, optional=memory_fields)
# Mostly well-formed writes (so memories exist to read, change and export), odd in the details.
plausible = st.fixed_dictionaries(
    {"user_id": st.just(USER), "text": st.text(min_size=1, max_size=20) | text,
     "infer": st.just(False)},
    optional={k: memory_fields[k] for k in ("metadata", "created_at", "agent_id", "tenant")},
)
# Raw bytes as well: non-finite numbers, broken JSON, JSON lines.
raw = st.one_of(
    plausible.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")),
    plausible.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")),
    bodies.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")),
    bodies.map(lambda b: json.dumps(b).replace("0", "NaN", 1).encode("utf-8", "surrogatepass")),
    st.lists(bodies, max_size=3).map(
        lambda rows: "\n".join(json.dumps(r) for r in rows).encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
)
query = st.dictionaries(
    st.sampled_from(["user_id", "tenant", "limit", "cursor", "filters", "agent_id",
                     "session_id", "include_superseded", "wait"]),
    text.filter(lambda t: "\ud800" not in t), max_size=5,
)
requests = st.tuples(
    st.sampled_from([
        ("POST", "/v1/memories"), ("POST", "/v1/memories"), ("POST", "/v1/memories"),
        ("POST", "/v1/memories/search"),
        ("POST", "/v1/memories/import"), ("PATCH", "/v1/memories/{id}"),
        ("GET", "/v1/memories"), ("GET", "/v1/memories/{id}"),
        ("GET", "/v1/memories/{id}/history"), ("DELETE", "/v1/memories/{id}"),
        ("GET", "/v1/users/{user}/export"), ("GET", "/v1/users/{user}/jobs"),
        ("PUT", "/v1/memories"), ("GET", "/v1/users/{user}"),
    ]),
    raw, query, text.filter(lambda t: "\ud800" not in t and "?" not in t and "#" not in t),
)


def segment(value: str) -> str:
    """As one path segment (a client would otherwise resolve "..")."""
    return quote(value, safe="").replace(".", "%2E")


def test_generated_memory_api_requests_never_5xx_and_refused_writes_store_nothing(
    tmp_path: Path,
) -> None:
    settings = load_settings(None, environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "upstream.url": "http://upstream.invalid/v1",
        "extraction.mode": "off", "store.shards": 2, "server.max_body_bytes": 4000,
        "admin_key": "adm-prop",
    })
    app = create_app(settings, embedder=HashingEmbedder())
    with TestClient(app) as client:
        store = app.state.services.store

        answered: set[int] = set()

        def count() -> int:
            return len(store.all_memories(USER))

        @examples(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(request=requests)
        def check(request: tuple[tuple[str, str], bytes, dict[str, str], str]) -> None:
            (method, path), body, params, name = request
            known = store.all_memories(USER)
            memory_id = known[0].id if known and name == "" else name or "x"
            url = path.replace("{id}", segment(memory_id)).replace("{user}", segment(name) or USER)
            before = count()
            response = client.request(method, url, content=body, params=params,
                                      headers={"content-type": "application/json",
                                               "authorization": "Bearer adm-prop"})
            assert response.status_code < 500, (method, url, response.status_code,
                                                 response.text)
            answered.add(response.status_code)
            if response.status_code >= 400:
                error: Any = response.json()["error"]
                assert isinstance(error["message"], str) and error["message"]
                if method in ("POST", "PATCH"):
                    assert count() == before, (method, url, body)
            for memory in store.all_memories(USER):  # everything stored reads back as JSON
                json.dumps(memory.to_json(), allow_nan=False)

        check()
        assert {200, 201, 400, 404} <= answered, answered  # the generated cases reach far
