"""The command line as a user runs it: real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import wait_until
from fake_upstream import FakeUpstream

from proxy.cli import build_parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memproxy(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def test_parser_maps_serve_flags() -> None:
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9", "--config", "c"])
    assert (args.host, args.port, args.config) == ("0.0.0.0", 9, "c")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["memories", "list"])  # --user is required


@pytest.mark.e2e
def test_serve_then_chat_then_list_memories(tmp_path: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MEMPROXY_UPSTREAM_URL": upstream.url,
        "MEMPROXY_DATA_DIR": str(tmp_path / "data"),
        "MEMPROXY_EXTRACTION_MODE": "raw",
        "MEMPROXY_PORT": str(port),
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve"], env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
                return False

        wait_until(healthy, timeout=120)
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-cli-test-key")
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "I use Vim for everything"}],
            extra_headers={"X-User-Id": "user_42"},
        )
        listed = wait_until(
            lambda: "I use Vim" in (r := memproxy(
                "memories", "list", "--user", "user_42", "--url", base, env=env
            )).stdout and r
        )
        assert listed.returncode == 0 and "raw" in listed.stdout
        as_json = memproxy("memories", "list", "--user", "user_42", "--json", env=env)
        assert [m["memory"] for m in json.loads(as_json.stdout)] == ["I use Vim for everything"]
        nobody = memproxy("memories", "list", "--user", "user_43", "--url", base, env=env)
        assert "no memories for user user_43" in nobody.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    # uvicorn re-raises SIGTERM after a graceful shutdown, hence -15 and not 0.
    assert server.returncode in (0, -15)
    assert "Application shutdown complete" in log_path.read_text()
    # Which file and which environment variables made the settings, names only.
    assert ("settings: no config file (built-in defaults); environment overrides: "
            "MEMPROXY_DATA_DIR, MEMPROXY_EXTRACTION_MODE, MEMPROXY_PORT, MEMPROXY_UPSTREAM_URL"
            ) in log_path.read_text()
    # The caller's key is never written to the data dir or the log.
    assert "sk-cli-test-key" not in log_path.read_text()
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"sk-cli-test-key" not in path.read_bytes(), path


def test_unreachable_proxy_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "MEMPROXY_DATA_DIR": str(tmp_path)}
    result = memproxy(
        "memories", "list", "--user", "u", "--url", f"http://127.0.0.1:{free_port()}", env=env
    )
    assert result.returncode == 1 and "cannot reach" in result.stderr
