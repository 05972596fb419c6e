"""Crash safety with real processes: kill -9 mid-job, SIGTERM with a grace period, restart.

The server runs as its own process (tests/proxy_process.py: memproxy's app, settings and
uvicorn, with the hashing embedder); the fake upstream runs here. After every restart the
interrupted job completes exactly once: nothing lost, nothing duplicated, no key on disk.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from conftest import wait_until
from fake_upstream import FakeUpstream
from http_checks import memories_of
from test_cli import free_port

from proxy.state.sqlite import database_path

HARNESS = Path(__file__).with_name("proxy_process.py")
KEY_BEFORE_CRASH = "sk-CRASH-TEST-KEY-1"
KEY_AFTER_CRASH = "sk-CRASH-TEST-KEY-2"


class ProxyProcess:
    """One server process on a fresh port, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**env, "MEMPROXY_PORT": str(self.port)}
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProxyProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HARNESS)], env=self.env, stdout=log, stderr=log
            )

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                return httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
                return False

        wait_until(healthy, timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        # uvicorn re-raises SIGTERM after a graceful shutdown, hence -15 and not 0.
        assert self.process.returncode in (0, -15), self.log()
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def base_env(tmp_path: Path, upstream: FakeUpstream, **settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MEMPROXY_UPSTREAM_URL": upstream.url,
        "MEMPROXY_DATA_DIR": str(tmp_path / "data"),
        "MEMPROXY_STORE__SHARDS": "4",
        "MEMPROXY_JOBS__POLL_SECONDS": "0.1",
        # Recovery after a crash must not wait for the lease to run out.
        "MEMPROXY_JOBS__LEASE_SECONDS": "600",
    }
    env.update({f"MEMPROXY_{name.upper()}": value for name, value in settings.items()})
    return env


def jobs_table(data_dir: Path) -> list[tuple[str, str, int]]:
    """(user, state, attempts) of every job, oldest first."""
    with sqlite3.connect(database_path(data_dir)) as conn:
        return conn.execute(
            "SELECT json_extract(identity, '$.user_id'), state, attempts FROM jobs ORDER BY id"
        ).fetchall()


def chat(base_url: str, user: str, *contents: str, key: str = "sk-test") -> Any:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": c} for c in contents],
        extra_headers={"X-User-Id": user},
    )


def assert_no_key_anywhere(tmp_path: Path, *keys: str) -> None:
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for key in keys:
                assert key.encode() not in data, path


def test_kill_9_mid_extraction_then_restart_completes_once_with_the_users_next_key(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    env = base_env(tmp_path, upstream, extraction__mode="llm")
    data_dir = tmp_path / "data"
    first = ProxyProcess(env, tmp_path / "first.log").start()
    second = ProxyProcess(env, tmp_path / "second.log")
    try:
        upstream.extraction_delay = 120  # the model call is in flight when the process dies
        chat(first.base_url, "kim", "I'm a glassblower. My studio is in Murano.",
             key=KEY_BEFORE_CRASH)
        wait_until(upstream.extraction_requests, timeout=60)
        assert jobs_table(data_dir) == [("kim", "running", 1)]
        first.kill()

        upstream.extraction_delay = 0
        second.start()
        # The dead process's lease is released at once; the job needs kim's key, which died
        # with that process: it waits for kim's next request instead of failing.
        wait_until(lambda: jobs_table(data_dir) == [("kim", "waiting_key", 1)], timeout=10)
        assert memories_of(second.base_url, "kim") == []

        chat(second.base_url, "kim", "Thanks!", key=KEY_AFTER_CRASH)
        wait_until(lambda: [s for _, s, _ in jobs_table(data_dir)] == ["done", "done"],
                   timeout=60)
        assert sorted(memories_of(second.base_url, "kim")) == [
            "User is a glassblower", "User's studio is in Murano",
        ]
        # The killed attempt counts (a job that kills its process must not loop forever);
        # waiting for the key does not.
        assert [a for _, _, a in jobs_table(data_dir)] == [2, 1]
        calls = upstream.extraction_requests()
        assert [c.headers["authorization"] for c in calls] == [
            f"Bearer {KEY_BEFORE_CRASH}",
            f"Bearer {KEY_AFTER_CRASH}",  # the replay ("Thanks!" states nothing: no call)
        ]
        second.terminate()
    finally:
        first.stop()
        second.stop()
    assert_no_key_anywhere(tmp_path, KEY_BEFORE_CRASH, KEY_AFTER_CRASH)


def test_kill_9_while_storing_then_restart_stores_each_fact_once(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    env = base_env(tmp_path, upstream, extraction__mode="raw")
    data_dir = tmp_path / "data"
    first = ProxyProcess({**env, "PROXY_TEST_SLOW_APPLY": "120"}, tmp_path / "first.log")
    second = ProxyProcess(env, tmp_path / "second.log")
    try:
        first.start()
        chat(first.base_url, "lev", "(slow) I knit socks", "(slow) I keep bees")
        wait_until(lambda: jobs_table(data_dir) == [("lev", "running", 1)])

        def saved() -> str | None:
            with sqlite3.connect(database_path(data_dir)) as conn:
                return conn.execute("SELECT result FROM jobs").fetchone()[0]

        wait_until(saved, timeout=10)  # extracted and saved; then killed while storing
        assert jobs_table(data_dir) == [("lev", "running", 1)]
        first.kill()

        second.start()
        wait_until(lambda: jobs_table(data_dir) == [("lev", "done", 2)])
        assert sorted(memories_of(second.base_url, "lev")) == [
            "(slow) I keep bees", "(slow) I knit socks",
        ]
        # The same exchange again (a client retry) adds nothing.
        chat(second.base_url, "lev", "(slow) I knit socks", "(slow) I keep bees")
        metrics = httpx.get(second.base_url + "/metrics").text
        assert 'memproxy_job_events_total{event="duplicates"} 1' in metrics
        assert len(memories_of(second.base_url, "lev")) == 2
        second.terminate()
    finally:
        first.stop()
        second.stop()


def test_sigterm_finishes_in_flight_work_within_the_grace_period_and_leaves_the_rest(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    env = base_env(tmp_path, upstream, extraction__mode="raw", jobs__workers="1")
    data_dir = tmp_path / "data"
    graceful = ProxyProcess(
        {**env, "PROXY_TEST_SLOW_APPLY": "1.5", "MEMPROXY_JOBS__SHUTDOWN_GRACE_SECONDS": "10"},
        tmp_path / "graceful.log",
    )
    impatient = ProxyProcess(
        {**env, "PROXY_TEST_SLOW_APPLY": "120", "MEMPROXY_JOBS__SHUTDOWN_GRACE_SECONDS": "0.5"},
        tmp_path / "impatient.log",
    )
    last = ProxyProcess(env, tmp_path / "last.log")
    try:
        graceful.start()
        chat(graceful.base_url, "ann", "(slow) I sail", "(slow) I row")
        chat(graceful.base_url, "bob", "(slow) I ski", "(slow) I skate")
        wait_until(lambda: ("ann", "running", 1) in jobs_table(data_dir))
        took = graceful.terminate()
        # ann's job finished (1.5 s < 10 s of grace); bob's was never started and waits.
        assert took < 8, took
        assert jobs_table(data_dir) == [("ann", "done", 1), ("bob", "queued", 0)]
        assert "Application shutdown complete" in graceful.log()

        impatient.start()
        wait_until(lambda: ("bob", "running", 1) in jobs_table(data_dir))
        took = impatient.terminate()
        # bob's job outlived 0.5 s of grace: released, claimable, the attempt not counted.
        assert took < 5, took
        assert jobs_table(data_dir)[1] == ("bob", "queued", 0)

        last.start()
        wait_until(lambda: jobs_table(data_dir)[1] == ("bob", "done", 1))
        assert sorted(memories_of(last.base_url, "ann")) == ["(slow) I row", "(slow) I sail"]
        assert sorted(memories_of(last.base_url, "bob")) == ["(slow) I skate", "(slow) I ski"]
        last.terminate()
    finally:
        for process in (graceful, impatient, last):
            process.stop()
