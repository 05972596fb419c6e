"""Start-up: a busy port is reported before anything is opened; "ready" only when ready;
a degraded start says so; upstream failures are logged with the URL, never a key; the
optional access log."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from http_checks import chat, closed_port
from pydantic import SecretStr
from servers import ThreadedServer

from proxy.cli.main import main
from proxy.config import Settings


def test_a_port_in_use_is_reported_at_once_before_the_data_dir_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data_dir = tmp_path / "data"
        started = time.monotonic()
        code = main(["serve", "--port", str(port), "--data-dir", str(data_dir)])
        elapsed = time.monotonic() - started
    assert code == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "in use" in err, err
    assert elapsed < 5 and not data_dir.exists()


def test_ready_is_logged_only_when_ready_and_a_degraded_start_says_so(
    settings: Settings, start_proxy: Callable[..., ThreadedServer], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memproxy")
    start_proxy(settings)
    assert any(r.getMessage().startswith("memproxy ready") for r in caplog.records)
    caplog.clear()

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data dir should be")
    settings.data_dir = blocked
    proxy = start_proxy(settings)
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("memproxy ready") for m in messages), messages
    [degraded] = [r for r in caplog.records if "DEGRADED" in r.getMessage()]
    assert degraded.levelno == logging.ERROR and "memory" in degraded.getMessage()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat(proxy.base_url, body, **{"X-User-Id": "u"}).headers[
        "x-memory-status"] == "degraded"


def test_upstream_failures_are_logged_with_the_url_never_the_key(
    settings: Settings, start_proxy: Callable[..., ThreadedServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    settings.upstream.url = f"http://127.0.0.1:{port}/v1"
    settings.upstream.api_key = SecretStr("sk-upstream-secret-123")
    proxy = start_proxy(settings)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(proxy.base_url + "/v1/chat/completions?key=sk-in-query", json=body,
                          headers={"authorization": "Bearer sk-caller-secret"})
    assert response.status_code == 502
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("memproxy")]
    assert any(f"http://127.0.0.1:{port}/v1/chat/completions" in m and "ConnectError" in m
               for m in logged), logged
    assert not any(secret in m for m in logged
                   for secret in ("sk-upstream-secret-123", "sk-caller-secret", "sk-in-query"))


@pytest.mark.parametrize("enabled", [False, True])
def test_the_access_log_is_a_setting(
    settings: Settings, start_proxy: Callable[..., ThreadedServer],
    caplog: pytest.LogCaptureFixture, enabled: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="memproxy.access")
    settings.server.access_log = enabled
    proxy = start_proxy(settings)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(proxy.base_url + "/v1/chat/completions?key=sk-in-query", json=body,
                      headers={"x-user-id": "u"}).status_code == 200
    assert httpx.get(proxy.base_url + "/nope").status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "memproxy.access"]
    if not enabled:
        assert lines == []
        return
    [chat_line, missing] = lines
    assert chat_line.startswith("POST /v1/chat/completions 200 memory=none injected=0 ")
    assert chat_line.endswith("ms") and "sk-in-query" not in chat_line
    assert missing.startswith("GET /nope 404 memory=- injected=- ")
