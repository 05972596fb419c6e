"""Extraction jobs seen from outside: retries and regenerations add no fact twice, the jobs
section of /metrics, and /readyz."""

from __future__ import annotations

import json
import re

import httpx
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import chat, memories_of, sdk
from test_fail_open import FailingStore

from proxy.config import Settings
from proxy.errors import MemoryUnavailable


def metric(base_url: str, line: str) -> float:
    """The value of one exact metric line (name and labels)."""
    text = httpx.get(base_url + "/metrics").text
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    assert match, (line, text)
    return float(match.group(1))


def test_a_retried_request_and_a_regenerated_answer_add_no_fact_twice(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.extraction.mode = "llm"
    proxy = start_proxy(settings)
    # A real model words the same fact differently each time: only dedupe by exchange helps.
    upstream.structured_replies += [json.dumps({"facts": ["User keeps bees in Oslo"]}),
                                    json.dumps({"facts": ["User is an Oslo beekeeper"]})]
    client = sdk(proxy.base_url + "/v1")
    messages: list = [{"role": "system", "content": "Today is Monday."},
                      {"role": "user", "content": "I'm a beekeeper in Oslo. Tips?"}]
    headers = {"X-User-Id": "bea"}
    client.chat.completions.create(model="m", messages=messages, extra_headers=headers)
    upstream.replies.append("A different answer")  # the user regenerates it, streamed
    for _ in client.chat.completions.create(model="m", messages=messages, stream=True,
                                            extra_headers=headers):
        pass
    retried = [{"role": "system", "content": "Today is Tuesday."}, messages[1]]
    client.chat.completions.create(model="m", messages=retried, extra_headers=headers)

    wait_until(lambda: memories_of(proxy.base_url, "bea"))
    events = 'memproxy_job_events_total{event="%s"}'
    wait_until(lambda: metric(proxy.base_url, events % "duplicates") == 2)
    wait_until(lambda: metric(proxy.base_url, events % "completed") == 1)
    assert memories_of(proxy.base_url, "bea") == ["User keeps bees in Oslo"]
    assert len(upstream.extraction_requests()) == 1

    # The conversation going on is a new exchange (the unused reply is not what it says).
    upstream.structured_replies.clear()
    follow_up = [*messages, {"role": "assistant", "content": "Sure."},
                 {"role": "user", "content": "I also grow lavender."}]
    client.chat.completions.create(model="m", messages=follow_up, extra_headers=headers)
    wait_until(lambda: len(memories_of(proxy.base_url, "bea")) == 2)
    assert "User also grows lavender" in memories_of(proxy.base_url, "bea")


def test_metrics_have_a_jobs_section(start_proxy) -> None:
    proxy = start_proxy()
    for n in range(3):
        body = {"model": "m", "messages": [{"role": "user", "content": f"I own {n + 2} cats"}]}
        assert chat(proxy.base_url, body, **{"X-User-Id": "cat-owner"}).status_code == 200
    wait_until(lambda: metric(proxy.base_url, 'memproxy_jobs{state="done"}') == 3)
    for state in ("queued", "failed", "running", "waiting_key", "dead"):
        assert metric(proxy.base_url, f'memproxy_jobs{{state="{state}"}}') == 0
    assert metric(proxy.base_url, "memproxy_jobs_lag_seconds") == 0
    assert metric(proxy.base_url, "memproxy_jobs_up") == 1
    assert metric(proxy.base_url, 'memproxy_job_events_total{event="enqueued"}') == 3


def test_readiness_reflects_the_store_jobs_and_workers(settings: Settings, start_proxy) -> None:
    healthy = start_proxy()
    ready = httpx.get(healthy.base_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True,
                            "checks": {"memory": True, "jobs": True, "worker": True}}

    failing = start_proxy(store=FailingStore(MemoryUnavailable("chroma is down")))
    ready = httpx.get(failing.base_url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"memory": False, "jobs": True, "worker": True}

    slow = start_proxy(store=FailingStore(delay=3.0))
    ready = httpx.get(slow.base_url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.elapsed.total_seconds() < 2.5

    settings.extraction.mode = "off"
    no_jobs = start_proxy(settings)
    assert httpx.get(no_jobs.base_url + "/readyz").json()["checks"] == {
        "memory": True, "jobs": True, "worker": True}
