"""Isolation, as a property: random interleavings of chats and memory-API calls by several
tenants and users never show one owner's memory to another (injection, list, search, export,
history) and never let one owner change or delete another's memory.

Every text written carries a unique token (``tok00042``) whose owner (tenant, user) is
recorded; whatever any owner sees may only hold that owner's tokens. One proxy in keys mode
serves all examples (tokens never repeat, so examples cannot mask each other).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream
from http_checks import injected_positions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import ThreadedServer

from proxy.app import create_app
from proxy.config_sources import load_settings
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path

TENANTS = ("A", "B")
USERS = ("u1", "u2", "u3")
OWNERS = [(t, u) for t in TENANTS for u in USERS]
BOUND = {("A", "u1"), ("B", "u1")}  # these owners also have a key bound to them
TOKEN = re.compile(r"tok\d{5}")
Owner = tuple[str, str]


@dataclass
class World:
    proxy: ThreadedServer
    upstream: FakeUpstream
    http: httpx.Client
    tenant_keys: dict[str, str]
    bound_keys: dict[Owner, str]
    owner_of: dict[str, Owner] = field(default_factory=dict)  # token → owner
    ids: dict[Owner, list[str]] = field(default_factory=dict)  # API-made memory ids
    counter: Iterator[int] = field(default_factory=itertools.count)

    def token(self, owner: Owner) -> str:
        token = f"tok{next(self.counter):05d}"
        self.owner_of[token] = owner
        return token

    def check(self, owner: Owner, text: str, where: str) -> None:
        for token in TOKEN.findall(text):
            assert self.owner_of.get(token) == owner, (
                f"{where}: {owner} saw {token} of {self.owner_of.get(token)}")

    def key_for(self, owner: Owner, bound: bool) -> str:
        return self.bound_keys[owner] if bound and owner in BOUND else self.tenant_keys[owner[0]]

    def api(self, owner: Owner, bound: bool, method: str, path: str,
            params: dict[str, Any] | None = None, json: dict[str, Any] | None = None,
            ) -> httpx.Response:
        """As the owner: a tenant key names the user; a bound key implies it."""
        key = self.key_for(owner, bound)
        params = dict(params or {})
        if key == self.tenant_keys[owner[0]]:
            params["user_id"] = owner[1]
            if method == "POST" and json is not None:
                json = {**json, "user_id": owner[1]}
        return self.http.request(method, path, params=params, json=json,
                                 headers={"authorization": f"Bearer {key}"})

    def as_admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)  # loopback, no admin key set

    def drain(self, timeout: float = 30) -> None:
        queue = self.proxy.app.state.services.jobs.queue
        deadline = time.monotonic() + timeout
        while True:
            stats = queue.stats()
            if stats.queued + stats.running + stats.failed == 0:
                return
            assert time.monotonic() < deadline, stats
            time.sleep(0.02)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir: Path = tmp_path_factory.mktemp("isolation")
    with FakeUpstream() as upstream:
        config = load_settings(None, environ={}, overrides={
            "data_dir": str(data_dir), "upstream.url": upstream.url,
            "upstream.api_key": "sk-upstream", "auth.mode": "keys",
            "extraction.mode": "raw", "store.shards": 2, "jobs.poll_seconds": 0.05,
        })
        keys = KeyStore(database_path(data_dir))
        tenant_keys = {t: keys.create(t)[1] for t in TENANTS}
        bound_keys = {owner: keys.create(owner[0], owner[1])[1] for owner in BOUND}
        keys.close()
        with ThreadedServer(create_app(config, embedder=HashingEmbedder())) as proxy, \
                httpx.Client(base_url=proxy.base_url, timeout=20) as http:
            yield World(proxy, upstream, http, tenant_keys, bound_keys)


owners = st.sampled_from(OWNERS)
actions = st.one_of(
    st.tuples(st.just("chat"), owners, st.booleans(), st.sampled_from(USERS)),
    st.tuples(st.just("add"), owners, st.booleans()),
    st.tuples(st.just("list"), owners, st.booleans()),
    st.tuples(st.just("search"), owners, st.booleans()),
    st.tuples(st.just("export"), owners, st.booleans()),
    st.tuples(st.just("history"), owners, st.booleans(), owners),
    st.tuples(st.just("patch"), owners, st.booleans(), owners),
    st.tuples(st.just("delete"), owners, st.booleans(), owners),
)


def run(world: World, action: tuple[Any, ...]) -> None:
    kind, owner, bound = action[0], action[1], action[2]
    if kind == "chat":
        # A bound key ignores the user the request names (action[3]); a tenant key uses it.
        key = world.key_for(owner, bound)
        named = action[3] if key != world.tenant_keys[owner[0]] else owner[1]
        text = f"note {world.token(owner)} about fact"
        response = world.http.post(
            "/v1/chat/completions", headers={"authorization": f"Bearer {key}",
                                             "X-User-Id": named},
            json={"model": "m", "messages": [{"role": "user", "content": text}]},
        )
        assert response.status_code == 200, response.text
        sent = [r.json for r in world.upstream.chat_requests()
                if TOKEN.findall(str(r.json)) and text in str(r.json)][-1]
        for position in injected_positions(sent):
            world.check(owner, sent["messages"][position]["content"], "injection")
    elif kind == "add":
        response = world.api(owner, bound, "POST", "/v1/memories", json={
            "infer": False, "text": f"added {world.token(owner)} fact"})
        assert response.status_code == 201, response.text
        world.ids.setdefault(owner, []).extend(m["id"] for m in response.json()["data"])
        world.check(owner, response.text, "add")
    elif kind == "list":
        response = world.api(owner, bound, "GET", "/v1/memories",
                             params={"include_superseded": "true", "limit": 1000})
        assert response.status_code == 200, response.text
        world.check(owner, response.text, "list")
    elif kind == "search":
        response = world.api(owner, bound, "POST", "/v1/memories/search",
                             json={"query": "note added fact", "limit": 100})
        assert response.status_code == 200, response.text
        world.check(owner, response.text, "search")
    elif kind == "export":
        response = world.api(owner, bound, "GET", f"/v1/users/{owner[1]}/export")
        assert response.status_code == 200, response.text
        world.check(owner, response.text, "export")
    else:
        target: Owner = action[3]
        if not world.ids.get(target):
            return
        memory_id = world.ids[target][-1]
        before = world.as_admin("GET", f"/v1/memories/{memory_id}")
        path = f"/v1/memories/{memory_id}" + ("/history" if kind == "history" else "")
        new_text = f"patched {world.token(owner)} fact"
        method = {"history": "GET", "patch": "PATCH", "delete": "DELETE"}[kind]
        response = world.api(owner, bound, method, path,
                             json={"text": new_text} if kind == "patch" else None)
        if target != owner:
            assert response.status_code in (403, 404), (kind, response.text)
            after = world.as_admin("GET", f"/v1/memories/{memory_id}")
            assert after.status_code == before.status_code and after.text == before.text
            world.owner_of.pop(TOKEN.findall(new_text)[0], None)
            return
        if before.status_code == 404 and kind != "history":
            assert response.status_code == 404
            return
        assert response.status_code == 200, (kind, response.text)
        world.check(owner, response.text, kind)
        if kind == "delete":
            world.ids[target].remove(memory_id)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(actions, min_size=1, max_size=12))
def test_no_owner_sees_or_changes_another_owners_memories(
    world: World, steps: list[tuple[Any, ...]]
) -> None:
    for action in steps:
        run(world, action)
    world.drain()
    for owner in OWNERS:  # after the background writes: everything, as the owner sees it
        for action in (("list", owner, True), ("search", owner, False),
                       ("export", owner, owner in BOUND)):
            run(world, action)
        run(world, ("history", owner, True, owner))
