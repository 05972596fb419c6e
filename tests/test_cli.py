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

from proxy import __version__
from proxy.cli.main import SERVE_FLAGS, build_parser, main
from proxy.config_sources import load_settings


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


def test_every_serve_flag_overrides_its_setting() -> None:
    argv = ["serve", "--data-dir", "/srv/mem", "--upstream-url", "http://llm:8080/v1",
            "--extraction-mode", "raw", "--extraction-model", "small", "--auth-mode", "signed",
            "--workers", "2", "--log-level", "warning"]
    args = build_parser().parse_args(argv)
    overrides = {flag.setting: getattr(args, flag.dest) for flag in SERVE_FLAGS}
    settings = load_settings(None, environ={"MEMPROXY_AUTH__SIGNING_SECRET": "s",
                                            "MEMPROXY_JOBS__WORKERS": "9"}, overrides=overrides)
    assert (settings.data_dir, settings.upstream.url, settings.extraction.mode,
            settings.extraction.model, settings.auth.mode, settings.jobs.workers,
            settings.server.log_level) == (Path("/srv/mem"), "http://llm:8080/v1", "raw",
                                           "small", "signed", 2, "warning")
    assert {flag.setting for flag in SERVE_FLAGS} >= {"server.host", "server.port", "data_dir"}


def test_help_version_and_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"memproxy {__version__}\n"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve_help = capsys.readouterr().out
    assert "--upstream-url" in serve_help and "MEMPROXY_<SECTION>__<KEY>" in serve_help
    assert "MEMPROXY_ADMIN_KEY" in serve_help  # how to set what has no flag
    with pytest.raises(SystemExit):
        main(["memories", "list", "--help"])
    listing = capsys.readouterr().out
    for flag in ("--agent", "--session", "--limit", "--include-superseded"):
        (line,) = [ln for ln in listing.splitlines() if ln.strip().startswith(flag)]
        assert len(line.split()) > 2 or flag == "--include-superseded", line  # has a text
    assert "replaced" in listing


def test_keys_list_outside_a_data_dir_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["keys", "list"], ["keys", "revoke", "key_1"]):
        assert main(argv) == 1
        assert "no data dir found: data/memproxy.sqlite does not exist" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    assert main(["keys", "create", "--tenant", "acme", "--data-dir", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--data-dir", str(tmp_path / "d")]) == 0
    assert "acme" in capsys.readouterr().out


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
