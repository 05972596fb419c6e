"""Several ``memproxy serve`` processes sharing one Postgres and one ``chroma run`` server.

Three replicas (tests/proxy_process.py: the real app, settings and uvicorn, with the hashing
embedder) on free ports, the fake upstream in this process, a fresh database per module and
fresh users per test. Each replica keeps its own in-process cache; what one replica writes,
supersedes or forgets must be what every other replica serves at its next request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream, default_relation, relation_pair
from http_checks import BLOCK_MARK, memories_of
from shared_servers import ChromaServer, PostgresServer
from test_crash_safety import ProxyProcess, chat

Cluster = dict[str, Any]


def shared_env(url: str, chroma: ChromaServer, upstream: FakeUpstream, data: Path,
               **settings: str) -> dict[str, str]:
    import os

    env = {
        **os.environ,
        "MEMPROXY_UPSTREAM_URL": upstream.url,
        "MEMPROXY_DATA_DIR": str(data),
        "MEMPROXY_DATABASE_URL": url,
        "MEMPROXY_STORE__CHROMA_HOST": chroma.host,
        "MEMPROXY_STORE__CHROMA_PORT": str(chroma.port),
        "MEMPROXY_STORE__SHARDS": "4",
        "MEMPROXY_JOBS__POLL_SECONDS": "0.1",
        "MEMPROXY_JOBS__LEASE_SECONDS": "3",
        "MEMPROXY_JOBS__RETRY_BASE_SECONDS": "0.3",
        "MEMPROXY_JOBS__RETRY_MAX_SECONDS": "1",
        "MEMPROXY_JOBS__COALESCE_SECONDS": "0",
        "MEMPROXY_EXTRACTION__MODE": "llm",
        "MEMPROXY_EXTRACTION__MODEL": "m",
    }
    env.update({f"MEMPROXY_{name.upper()}": value for name, value in settings.items()})
    return env


def jobs(url: str) -> list[tuple[str, str, int, str | None]]:
    """(user, state, attempts, lease holder) of every job, oldest first."""
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT identity::jsonb ->> 'user_id', state, attempts, lease_owner FROM jobs"
            " ORDER BY id").fetchall()]


def done(url: str, user: str, count: int = 1) -> bool:
    states = [s for u, s, _, _ in jobs(url) if u == user]
    return len(states) >= count and all(s == "done" for s in states)


def injected(upstream: FakeUpstream, marker: str) -> str:
    """The memory block of the last forwarded chat whose user text holds ``marker``."""
    sent = [r.json for r in upstream.chat_requests() if marker in json.dumps(r.json)][-1]
    return "\n".join(
        str(m["content"]) for m in sent["messages"]
        if m.get("role") in ("system", "developer") and BLOCK_MARK in str(m["content"])
    )


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, chroma_server: ChromaServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    url = postgres_server.new_database()
    with FakeUpstream() as upstream:
        replicas = [
            ProxyProcess(shared_env(url, chroma_server, upstream, root / f"data{n}"),
                         root / f"replica{n}.log")
            for n in range(3)
        ]
        try:
            for replica in replicas:
                replica.start()
            yield {"url": url, "upstream": upstream, "replicas": replicas, "root": root}
        finally:
            for replica in replicas:
                replica.stop()


def test_a_fact_extracted_via_a_is_injected_by_b(cluster: Cluster) -> None:
    a, b, _ = cluster["replicas"]
    up, url = cluster["upstream"], cluster["url"]
    chat(b.base_url, "ana", "hello there (warm b)")  # b caches ana's (empty) memories
    wait_until(lambda: done(url, "ana"))
    chat(a.base_url, "ana", "I keep bees on my roof.")
    wait_until(lambda: done(url, "ana", 2))
    chat(b.base_url, "ana", "what do I keep? (ask b)")
    assert "User keeps bees" in injected(up, "(ask b)")


def test_a_supersede_on_b_is_never_served_stale_by_a(cluster: Cluster) -> None:
    a, b, c = cluster["replicas"]
    up, url = cluster["upstream"], cluster["url"]

    def judge(body: dict[str, Any]) -> str:
        old, new = relation_pair(body)
        return "replaces" if "lives in" in old and "lives in" in new else default_relation(body)

    up.judge_relation = judge
    try:
        chat(c.base_url, "ben", "I live in Paris.")
        wait_until(lambda: done(url, "ben"))
        chat(a.base_url, "ben", "where do I live? (a before)")
        assert "User lives in Paris" in injected(up, "(a before)")  # a has ben cached now
        chat(b.base_url, "ben", "I live in Rome.")
        wait_until(lambda: done(url, "ben", 3))
        chat(a.base_url, "ben", "where do I live? (a after)")
        block = injected(up, "(a after)")
        assert "User lives in Rome" in block and "Paris" not in block
    finally:
        up.judge_relation = default_relation


def test_an_api_edit_and_delete_on_one_replica_reach_the_others(cluster: Cluster) -> None:
    a, b, _ = cluster["replicas"]
    up = cluster["upstream"]
    made = httpx.post(a.base_url + "/v1/memories", json={
        "user_id": "cem", "infer": False, "text": "User plays the oboe"}, timeout=10)
    assert made.status_code == 201, made.text
    memory_id = made.json()["data"][0]["id"]
    chat(b.base_url, "cem", "what do I play? (b 1)")
    assert "oboe" in injected(up, "(b 1)")
    patched = httpx.patch(f"{a.base_url}/v1/memories/{memory_id}",
                          json={"text": "User plays the bassoon"}, timeout=10)
    assert patched.status_code == 200, patched.text
    chat(b.base_url, "cem", "what do I play? (b 2)")
    block = injected(up, "(b 2)")
    assert "bassoon" in block and "oboe" not in block
    assert httpx.delete(f"{a.base_url}/v1/memories/{memory_id}", timeout=10).status_code == 200
    chat(b.base_url, "cem", "what do I play? (b 3)")
    assert "bassoon" not in injected(up, "(b 3)")


def test_forget_on_a_leaves_nothing_on_b_even_from_a_job_running_there(
    cluster: Cluster,
) -> None:
    replicas = cluster["replicas"]
    up, url = cluster["upstream"], cluster["url"]
    chat(replicas[1].base_url, "dee", "I collect stamps.")
    wait_until(lambda: done(url, "dee"))
    chat(replicas[1].base_url, "dee", "what do I collect? (b cached)")
    assert "stamps" in injected(up, "(b cached)")

    up.extraction_delay = 4.0  # the next job's model call is in flight during the forget
    try:
        chat(replicas[1].base_url, "dee", "I also collect coins.")
        holder = wait_until(lambda: next(
            (h for u, s, _, h in jobs(url) if u == "dee" and s == "running"), None))
        pid = int(holder.split(":")[1])
        runner = next(r for r in replicas if r.process and r.process.pid == pid)
        other = next(r for r in replicas if r is not runner)
        gone = httpx.delete(f"{other.base_url}/v1/users/dee", timeout=10)
        assert gone.status_code == 200, gone.text
        time.sleep(up.extraction_delay + 1.0)  # the job on `runner` finishes its model call
    finally:
        up.extraction_delay = 0.0
    for replica in replicas:
        assert memories_of(replica.base_url, "dee") == []
    chat(replicas[1].base_url, "dee", "what do I collect? (after forget)")
    assert injected(up, "(after forget)") == ""


def test_a_key_made_with_the_cli_works_on_every_replica(
    postgres_server: PostgresServer, chroma_server: ChromaServer, tmp_path: Path,
    upstream: FakeUpstream,
) -> None:
    url = postgres_server.new_database()
    env = shared_env(url, chroma_server, upstream, tmp_path / "data",
                     auth__mode="keys", upstream__api_key="sk-upstream",
                     extraction__mode="off")
    replicas = [ProxyProcess(env, tmp_path / f"k{n}.log") for n in range(2)]
    try:
        for replica in replicas:
            replica.start()
        made = subprocess.run(
            [sys.executable, "-m", "proxy", "keys", "create", "--tenant", "acme", "--json"],
            env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
        )
        token = json.loads(made.stdout)["key"]
        for replica in replicas:
            response = httpx.post(
                replica.base_url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {token}", "X-User-Id": "eve"},
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        key_id = json.loads(made.stdout)["id"]
        subprocess.run([sys.executable, "-m", "proxy", "keys", "revoke", key_id],
                       env=env, capture_output=True, check=True, cwd=tmp_path)
        for replica in replicas:
            response = httpx.post(
                replica.base_url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {token}", "X-User-Id": "eve"},
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert response.status_code == 401, response.text
    finally:
        for replica in replicas:
            replica.stop()


def test_kill_9_of_a_mid_job_b_finishes_it_once_after_the_lease(
    postgres_server: PostgresServer, chroma_server: ChromaServer, tmp_path: Path,
    upstream: FakeUpstream,
) -> None:
    url = postgres_server.new_database()
    env = shared_env(url, chroma_server, upstream, tmp_path / "data", extraction__mode="raw")
    a = ProxyProcess({**env, "PROXY_TEST_SLOW_APPLY": "120"}, tmp_path / "a.log")
    b = ProxyProcess(env, tmp_path / "b.log")
    try:
        a.start()
        chat(a.base_url, "fay", "(slow) I knit socks", "(slow) I keep bees")

        def saved() -> bool:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT result FROM jobs").fetchone()
            return row is not None and row[0] is not None

        wait_until(saved, timeout=20)  # a extracted and saved; now it is storing, slowly
        b.start()  # a is alive: its lease holds; b must not take the job
        time.sleep(1.0)
        assert [(s, n) for _, s, n, _ in jobs(url)] == [("running", 1)]
        a.kill()
        started = time.monotonic()
        wait_until(lambda: [(s, n) for _, s, n, _ in jobs(url)] == [("done", 2)], timeout=30)
        assert time.monotonic() - started < 15  # after the 3 s lease, not never
        assert sorted(memories_of(b.base_url, "fay")) == [
            "(slow) I keep bees", "(slow) I knit socks",  # each once
        ]
    finally:
        a.stop()
        b.stop()


def test_postgres_restart_chats_keep_flowing_and_jobs_resume(
    cluster: Cluster, postgres_server: PostgresServer,
) -> None:
    a, b, _ = cluster["replicas"]
    url = cluster["url"]
    postgres_server.stop()
    try:
        for replica in (a, b):
            reply = chat(replica.base_url, "gil", "hello while the database is down")
            assert reply.choices[0].message.content
        ready = httpx.get(a.base_url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    finally:
        postgres_server.start()
    for replica in (a, b):
        wait_until(lambda r=replica: httpx.get(r.base_url + "/readyz", timeout=10
                                               ).status_code == 200, timeout=30)
    chat(b.base_url, "gil", "I sail a small boat.")
    try:
        wait_until(lambda: done(url, "gil"), timeout=30)
    except AssertionError:
        raise AssertionError(f"jobs: {jobs(url)}; b's log: {b.log()[-3000:]}") from None
    assert "User sails a small boat" in memories_of(a.base_url, "gil")


def test_chroma_down_chats_flow_degraded_and_writes_wait_in_the_queue(
    cluster: Cluster, chroma_server: ChromaServer,
) -> None:
    a, b, _ = cluster["replicas"]
    url = cluster["url"]
    chroma_server.stop()
    try:
        response = httpx.post(
            a.base_url + "/v1/chat/completions", headers={"X-User-Id": "hal"}, timeout=30,
            json={"model": "m", "messages": [{"role": "user", "content": "I fly kites."}]},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-memory-status"] == "degraded"
        wait_until(lambda: [s for u, s, _, _ in jobs(url) if u == "hal"] == ["queued"])
        time.sleep(2.0)  # several retry periods: the job waits, it spends no attempts
        assert [(s, n) for u, s, n, _ in jobs(url) if u == "hal"] == [("queued", 0)]
    finally:
        chroma_server.start()
    wait_until(lambda: done(url, "hal"), timeout=30)
    assert [m for m in memories_of(b.base_url, "hal") if "kites" in m] == ["User fly kites"]
