"""Which headers reach the provider, and who they say the user is: Open WebUI's user-info
headers by default, the proxy's control headers never forwarded, identity headers as a
setting, keys mode on /v1/messages, and no encoding a client did not accept."""

from __future__ import annotations

import gzip
import http.client
import json

import anthropic
import httpx
import openai
import pytest
from conftest import wait_until
from dialect_checks import FACT, STORED_FACT, memory_rows
from fake_upstream import FakeUpstream
from pydantic import SecretStr

from proxy.config import AnthropicSettings, Settings
from proxy.gateway.auth import sign_user_id
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path

OPEN_WEBUI = {  # what Open WebUI sends with ENABLE_FORWARD_USER_INFO_HEADERS=true
    "X-OpenWebUI-User-Name": "Ada Lovelace",
    "X-OpenWebUI-User-Id": "owui-7f3a",
    "X-OpenWebUI-User-Email": "ada@example.com",
    "X-OpenWebUI-User-Role": "user",
    "X-OpenWebUI-Chat-Id": "chat-42",
}


def test_open_webui_headers_name_the_user_and_session_by_default(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(settings)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-x")
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": FACT}], extra_headers=OPEN_WEBUI,
    )
    assert raw.headers["x-memory-status"] == "none"  # identified (not "skipped")
    rows = wait_until(lambda: memory_rows(proxy.base_url, "owui-7f3a"))
    assert [(r["memory"], r["session_id"]) for r in rows] == [(STORED_FACT, "chat-42")]
    # Forwarded as today unless told otherwise.
    sent = upstream.chat_requests()[0].headers
    assert sent["x-openwebui-user-email"] == "ada@example.com"


def test_identity_headers_can_be_kept_from_the_provider(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.identity.forward_headers = False
    proxy = start_proxy(settings)
    headers = {**OPEN_WEBUI, "X-User-Id": "u1", "X-Agent-Id": "bot", "X-Session-Id": "s1",
               "X-Trace": "kept"}
    openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-x").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers,
    )
    anthropic.Anthropic(base_url=proxy.base_url, api_key="k", max_retries=0).messages.create(
        model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
        extra_headers=headers,
    )
    for request in (upstream.chat_requests()[0], upstream.messages_requests()[0]):
        sent = request.headers
        assert not [name for name in sent if name.startswith("x-openwebui-")]
        assert {"x-user-id", "x-agent-id", "x-session-id"}.isdisjoint(sent)
        assert sent["x-trace"] == "kept"


def test_control_headers_never_reach_the_provider(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.auth.mode = "signed"
    settings.auth.signing_secret = SecretStr("gateway-secret")
    proxy = start_proxy(settings)
    headers = {"X-User-Id": "u2", "X-Memory-Mode": "read",
               "X-User-Signature": sign_user_id("gateway-secret", "u2")}
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-x")
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers=headers)
    client.responses.create(model="m", input="hi", extra_headers=headers)
    client.models.list(extra_headers=headers)
    for request in upstream.requests:
        assert "x-memory-mode" not in request.headers
        assert "x-user-signature" not in request.headers
        assert request.headers["x-user-id"] == "u2"  # identity headers: forwarded by default


def test_keys_mode_on_messages_takes_the_proxy_key_as_x_api_key(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    settings.auth.mode = "keys"
    settings.upstream.api_key = SecretStr("sk-openai-operator")
    settings.auth.loopback_admin = True
    keys = KeyStore(database_path(settings.data_dir))
    _, token = keys.create("acme", user_id="alice")
    keys.close()
    no_key = start_proxy(settings)
    request = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.APIStatusError) as refused:
        anthropic.Anthropic(base_url=no_key.base_url, api_key=token,
                            max_retries=0).messages.create(**request)
    # No Anthropic key configured: refused, the proxy key never sent anywhere.
    assert refused.value.status_code == 503
    assert refused.value.body["error"]["type"] == "api_error"
    assert upstream.messages_requests() == []

    operator = AnthropicSettings(url=settings.anthropic.url, api_key="sk-ant-operator")
    proxy = start_proxy(settings.model_copy(update={"anthropic": operator}))
    # Anthropic clients that send x-api-key (curl, the TypeScript SDK), and this SDK's bearer.
    raw = httpx.post(proxy.base_url + "/v1/messages", json=request,
                     headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
    assert raw.status_code == 200 and raw.headers["x-memory-status"] == "none"
    anthropic.Anthropic(base_url=proxy.base_url, api_key=token,
                        max_retries=0).messages.create(**request)
    for sent in upstream.messages_requests():
        assert sent.headers["x-api-key"] == "sk-ant-operator"
        assert "authorization" not in sent.headers
    # The key's tenant and bound user own what was said, whatever the body claims.
    said = {**request, "messages": [{"role": "user", "content": FACT}],
            "metadata": {"user_id": "mallory"}}
    httpx.post(proxy.base_url + "/v1/messages", json=said,
               headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
    owned = wait_until(lambda: httpx.get(proxy.base_url + "/v1/memories", params={
        "user_id": "alice", "tenant": "acme"}).json()["data"])
    assert [m["memory"] for m in owned] == [STORED_FACT]
    with pytest.raises(anthropic.AuthenticationError) as bad:
        anthropic.Anthropic(base_url=proxy.base_url, api_key="mp-wrong",
                            max_retries=0).messages.create(**request)
    assert bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "authentication_error"


def _get_models(port: int, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    # http.client sends only the headers it is given: no Accept-Encoding of its own.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v1/models", headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return {k.lower(): v for k, v in response.getheaders()}, body


def test_a_client_without_accept_encoding_never_gets_a_compressed_body(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    proxy = start_proxy(settings)
    headers, body = _get_models(proxy.port, {"Authorization": "Bearer sk-x"})
    assert "content-encoding" not in headers
    assert json.loads(body)["data"][0]["id"] == "fake-model"
    assert upstream.requests[-1].headers["accept-encoding"] == "identity"
    # A client that accepts gzip gets the upstream's gzip, untouched.
    headers, body = _get_models(proxy.port, {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["object"] == "list"


def test_a_cookie_the_provider_sets_for_one_caller_never_reaches_the_next(
    settings: Settings, upstream: FakeUpstream, start_proxy
) -> None:
    """One shared connection pool serves every caller: a cookie the provider sets (Cloudflare
    sets them on OpenAI's API; a self-hosted upstream may keep a session in one) goes back to
    the caller it was set for, and is never sent upstream on anyone's request."""
    proxy = start_proxy(settings)
    upstream.errors.append((429, {"error": {"message": "slow down", "type": "rate_limit"}},
                            {"set-cookie": "session=alice-secret; Path=/"}))
    alice = httpx.post(proxy.base_url + "/v1/chat/completions", headers={"X-User-Id": "alice"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert alice.status_code == 429
    assert "alice-secret" in alice.headers["set-cookie"]  # the caller's own response: kept
    openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-bob").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-User-Id": "bob"})
    httpx.get(proxy.base_url + "/v1/models", headers={"Authorization": "Bearer sk-bob"})
    assert len(upstream.requests) == 3
    assert all("cookie" not in r.headers for r in upstream.requests)
