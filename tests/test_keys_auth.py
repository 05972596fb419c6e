"""Keys mode and signed user ids, end to end with the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import assert_openai_error, injected_positions, sdk
from pydantic import SecretStr
from servers import ThreadedServer

from proxy.config import Settings
from proxy.config_sources import ConfigError, load_settings
from proxy.gateway.auth import sign_user_id
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path

UPSTREAM_KEY = "sk-held-by-the-proxy"


def memories(proxy: ThreadedServer, user: str, tenant: str) -> list[str]:
    """As the loopback admin (no admin key configured; keys mode: auth.loopback_admin)."""
    response = httpx.get(proxy.base_url + "/v1/memories",
                         params={"user_id": user, "tenant": tenant})
    assert response.status_code == 200, response.text
    return [m["memory"] for m in response.json()["data"]]


def ask(client: openai.OpenAI, text: str, **headers: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], extra_headers=headers
    )


def test_keys_mode_end_to_end(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.auth.mode = "keys"
    settings.upstream.api_key = SecretStr(UPSTREAM_KEY)
    settings.auth.loopback_admin = True  # memories(): the loopback admin, no admin key
    keys = KeyStore(database_path(settings.data_dir))
    _, key_a = keys.create("A", name="app-a")
    _, key_b = keys.create("B")
    _, alice_key = keys.create("A", user_id="alice")
    gone, revoked = keys.create("A")
    assert keys.revoke(gone.id)
    keys.close()
    proxy = start_proxy(settings)
    base = proxy.base_url + "/v1"

    for wrong in ("sk-not-a-proxy-key", "mp-made-up", revoked):
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(sdk(base, wrong), "hello", **{"X-User-Id": "u1"})
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert_openai_error(httpx.get(base + "/models"), 401, "invalid_api_key")
    assert httpx.get(base + "/models", headers={"authorization": f"Bearer {key_a}"}
                     ).status_code == 200

    # Tenants namespace users: A's u1 and B's u1 are different people.
    ask(sdk(base, key_a), "I keep bees in my garden", **{"X-User-Id": "u1"})
    wait_until(lambda: memories(proxy, "u1", "A"))
    upstream.clear()
    ask(sdk(base, key_b), "what do I keep in my garden?", **{"X-User-Id": "u1"})
    assert injected_positions(upstream.chat_requests()[0].json) == []
    upstream.clear()
    reply = sdk(base, key_a).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "what do I keep in my garden?"}],
        extra_headers={"X-User-Id": "u1"},
    )
    assert reply.headers["x-memory-status"] == "injected"
    assert "I keep bees in my garden" not in memories(proxy, "u1", "B")
    ask(sdk(base, key_b), "I grow tomatoes", **{"X-User-Id": "u1"})  # B's u1 states a fact
    wait_until(lambda: memories(proxy, "u1", "B") == ["I grow tomatoes"])

    # A key bound to alice speaks for alice, whatever the request names.
    ask(sdk(base, alice_key), "I play the cello", **{"X-User-Id": "mallory"})
    sdk(base, alice_key).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "I live in Bergen"}], user="eve")
    wait_until(lambda: len(memories(proxy, "alice", "A")) == 2)
    assert memories(proxy, "mallory", "A") == [] and memories(proxy, "eve", "A") == []

    # The proxy key never reaches the upstream: the proxy's own key does.
    assert upstream.requests and all(
        r.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}" for r in upstream.requests
    )

    # The memory API with a proxy key: its tenant, and its user when bound.
    def api(key: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, proxy.base_url + path,
                             headers={"authorization": f"Bearer {key}"}, **kwargs)  # type: ignore[arg-type]

    listed = api(key_a, "GET", "/v1/memories", params={"user_id": "u1"}).json()["data"]
    [theirs] = [m["id"] for m in listed if m["memory"] == "I keep bees in my garden"]
    seen_by_b = api(key_b, "GET", "/v1/memories", params={"user_id": "u1"}).json()["data"]
    assert seen_by_b and theirs not in [m["id"] for m in seen_by_b]
    assert_openai_error(api(key_b, "GET", f"/v1/memories/{theirs}"), 404, "not_found")
    assert_openai_error(api(key_b, "DELETE", f"/v1/memories/{theirs}"), 404, "not_found")
    assert_openai_error(api(key_b, "GET", f"/v1/memories/{theirs}/history"), 404)
    assert_openai_error(api(key_b, "GET", "/v1/memories",
                            params={"user_id": "u1", "tenant": "A"}), 403, "forbidden")
    assert_openai_error(api(alice_key, "GET", f"/v1/memories/{theirs}"), 404)
    assert_openai_error(api(alice_key, "GET", "/v1/memories", params={"user_id": "u1"}), 403)
    own = api(alice_key, "GET", "/v1/memories").json()["data"]  # user implied by the key
    assert sorted(m["memory"] for m in own) == ["I live in Bergen", "I play the cello"]
    assert_openai_error(api(revoked, "GET", "/v1/memories", params={"user_id": "u1"}), 401)
    assert api(key_a, "GET", f"/v1/memories/{theirs}").status_code == 200


def test_keys_mode_needs_the_upstream_key_and_signed_mode_a_secret() -> None:
    with pytest.raises(ConfigError, match="upstream.api_key"):
        load_settings(None, environ={"MEMPROXY_AUTH__MODE": "keys"})
    with pytest.raises(ConfigError, match="signing_secret"):
        load_settings(None, environ={"MEMPROXY_AUTH__MODE": "signed"})


def test_signed_user_ids(
    settings: Settings, upstream: FakeUpstream, start_proxy: Callable[..., ThreadedServer]
) -> None:
    settings.auth.mode = "signed"
    settings.auth.signing_secret = SecretStr("gateway-secret")
    proxy = start_proxy(settings)
    client = sdk(proxy.base_url + "/v1")
    good = sign_user_id("gateway-secret", "u7")
    ask(client, "I drive a red van", **{"X-User-Id": "u7", "X-User-Signature": good})
    wait_until(lambda: memories(proxy, "u7", "default"))
    for signature in (None, "00" * 32, sign_user_id("other-secret", "u7"),
                      sign_user_id("gateway-secret", "u8")):
        headers = {"X-User-Id": "u7"}
        if signature:
            headers["X-User-Signature"] = signature
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(client, "what do I drive?", **headers)
        assert caught.value.body["code"] == "invalid_user_signature"  # type: ignore[index]
    reply = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "what do I drive?"}],
        extra_headers={"X-User-Id": "u7", "X-User-Signature": "sha256=" + good.upper()},
    )
    assert reply.headers["x-memory-status"] == "injected"
    # No user named: passed through untouched, as without signatures.
    anonymous = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert anonymous.headers["x-memory-status"] == "skipped"


def test_identity_with_a_tenant_round_trips_through_a_job_row() -> None:
    from dataclasses import asdict

    from proxy.extraction.jobs import identity_from_json, owner_of
    from proxy.gateway.identity import Identity

    identity = Identity("u1", "agent", "s", "read", tenant="A")
    assert Identity(**asdict(identity)) == identity
    assert identity_from_json(json.dumps(asdict(identity))) == identity
    assert identity_from_json(json.dumps({"user_id": "u1"})).tenant == "default"
    assert owner_of(identity) != owner_of(Identity("u1", tenant="B"))


@pytest.mark.parametrize("loopback_admin", [False, True])
def test_keys_mode_memory_api_admin_needs_the_admin_key_unless_loopback_admin_is_on(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], loopback_admin: bool
) -> None:
    settings.auth.mode = "keys"
    settings.upstream.api_key = SecretStr(UPSTREAM_KEY)
    settings.auth.loopback_admin = loopback_admin
    keys = KeyStore(database_path(settings.data_dir))
    _, key_a = keys.create("A")
    keys.close()
    proxy = start_proxy(settings)
    url = proxy.base_url + "/v1/memories"
    query = {"user_id": "u1", "tenant": "B"}
    # Behind a reverse proxy on the same host every client is loopback: no key, or any
    # bearer that is not a proxy key, must not be the admin.
    for headers in ({}, {"authorization": "Bearer sk-anything"}):
        response = httpx.get(url, params=query, headers=headers)
        if loopback_admin:
            assert response.status_code == 200, response.text
        else:
            assert_openai_error(response, 401, "invalid_api_key")
            assert "admin key" in response.json()["error"]["message"]
    # A proxy key keeps its own tenant either way.
    assert_openai_error(httpx.get(url, params=query,
                                  headers={"authorization": f"Bearer {key_a}"}), 403)
