"""``GET /v1/users/{user_id}/jobs``: a user's pending extraction, and waiting for it — the way
the README walkthrough reads a fact back right after the first exchange."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_upstream import FakeUpstream
from http_checks import assert_openai_error, memories_of, sdk

from proxy.config import Settings
from proxy.extraction.workers import AnsweredExchanges


def jobs_of(base_url: str, user_id: str, **params: str) -> dict:
    response = httpx.get(f"{base_url}/v1/users/{user_id}/jobs", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("stream", [False, True])
def test_wait_returns_once_the_first_exchange_is_remembered(
    stream: bool, settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.extraction.mode = "llm"
    upstream.extraction_delay = 0.5  # like a real model: the fact lands a moment later
    upstream.structured_replies.append(json.dumps({"facts": ["User uses Next.js"]}))
    proxy = start_proxy(settings)
    client = sdk(proxy.base_url + "/v1")
    messages: list = [{"role": "user", "content": "I'm building this in Next.js"}]
    reply = client.chat.completions.create(
        model="m", messages=messages, stream=stream, extra_headers={"X-User-Id": "u42"}
    )
    if stream:
        for _ in reply:
            pass

    # Asked at once: the exchange is counted whether or not its job row is written yet.
    right_after = jobs_of(proxy.base_url, "u42")
    assert right_after["pending"] >= 1, right_after
    assert memories_of(proxy.base_url, "u42") == []

    done = jobs_of(proxy.base_url, "u42", wait="20")
    assert done["pending"] == 0 and not done["timed_out"], done
    assert done["states"] == {"answered": 0, "queued": 0, "failed": 0, "running": 0,
                              "waiting_key": 0}
    assert memories_of(proxy.base_url, "u42") == ["User uses Next.js"]


def test_wait_times_out_and_says_so(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.extraction.mode = "llm"
    upstream.extraction_delay = 5.0
    proxy = start_proxy(settings)
    sdk(proxy.base_url + "/v1").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "I keep bees"}],
        extra_headers={"X-User-Id": "slow"},
    )
    waited = jobs_of(proxy.base_url, "slow", wait="0.3")
    assert waited["timed_out"] is True and waited["pending"] == 1, waited
    # Another user has nothing pending, whatever this one waits for.
    assert jobs_of(proxy.base_url, "other", wait="5")["pending"] == 0
    upstream.extraction_delay = 0.0


def test_bad_wait_is_a_400_and_extraction_off_has_no_jobs(
    settings: Settings, start_proxy
) -> None:
    proxy = start_proxy(settings)
    for bad in ("-1", "61", "soon", "nan"):
        response = httpx.get(f"{proxy.base_url}/v1/users/u/jobs", params={"wait": bad})
        assert_openai_error(response, 400, "invalid_request")
        assert response.json()["error"]["param"] == "wait"
    settings.extraction.mode = "off"
    off = start_proxy(settings)
    assert jobs_of(off.base_url, "u", wait="5") == {
        "object": "user.jobs", "tenant": "default", "user_id": "u", "pending": 0,
        "states": {}, "timed_out": False, "extraction": "off",
    }


def test_answered_exchanges_count_per_owner_until_stored_or_expired() -> None:
    now = [100.0]
    answered = AnsweredExchanges(ttl=60.0, clock=lambda: now[0])
    first, second = answered.add("ann"), answered.add("ann")
    answered.add("bob")
    assert (answered.count("ann"), answered.count("bob"), answered.count("cyd")) == (2, 1, 0)
    answered.discard(first)
    answered.discard(first)  # twice is harmless
    assert answered.count("ann") == 1
    now[0] += 61  # a response whose client left before its job was written
    assert answered.count("ann") == answered.count("bob") == 0
    answered.discard(second)
