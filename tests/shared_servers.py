"""A real Postgres server and a real ``chroma run`` server, for the scale-out tests.

Postgres: Debian's postgresql 15 (``scripts/test-deps`` installs it), initdb'd in a temp dir
and run as an unprivileged user (postgres refuses root) on a free port; each test asks for a
fresh database (``PostgresServer.new_database``). Chroma: the venv's ``chroma run`` on a free
port and a temp dir; each test uses a fresh tenant-free set of collections by choosing
fresh owners (store.shards collections are shared, owners are not).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "memproxytest"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    return (PG_BIN / "postgres").exists()


def _unprivileged_user() -> str | None:
    """Who runs postgres: ourselves unless root (then a created system user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
    return PG_USER


class PostgresServer:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.user = _unprivileged_user()
        self._process: subprocess.Popen[bytes] | None = None

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.root, self.user)
        if not self.data.exists():
            subprocess.run(
                self._as_user([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--no-sync"]),
                check=True, capture_output=True,
            )
        self._process = subprocess.Popen(
            self._as_user([str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                           "-k", str(self.root), "-h", "127.0.0.1", "-c", "fsync=off",
                           "-c", "max_connections=300", "-c", "synchronous_commit=off"]),
            stdout=subprocess.DEVNULL, stderr=open(self.root / "postgres.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                import psycopg

                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not start; see {self.root}/postgres.log") from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, *, fast: bool = True) -> None:
        """Fast shutdown (SIGINT: every connection dropped, a clean stop), or with
        ``fast=False`` an immediate one (SIGQUIT: no checkpoint, recovery at the next start).

        The signal goes to the postmaster itself, never through ``runuser``: runuser answers a
        SIGTERM by SIGKILLing its child 2 s later, which leaves orphaned backends holding the
        shared memory, and then the next start on the same data directory fails.
        """
        if self._process is None or self._process.poll() is not None:
            self._process = None
            return
        pid = self._postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT if fast else signal.SIGQUIT)
        else:
            self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def restart(self) -> None:
        """Stop (fast shutdown: every connection dropped) and start again, same port."""
        self.stop()
        self.start()


class ChromaServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> ChromaServer:
        chroma = Path(sys.executable).with_name("chroma")
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self._process = subprocess.Popen(
            [str(chroma), "run", "--path", str(self.root), "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.root.parent / "chroma.log", "ab"),  # noqa: SIM115
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat",
                             timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chroma run did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One Postgres per test session (tests take fresh databases from it)."""
    if not postgres_available():
        pytest.skip("PostgreSQL 15 is not installed (scripts/test-deps installs it)")
    # Not under pytest's temp dir: that is private to root, and postgres runs as another user.
    root = Path(tempfile.mkdtemp(prefix="memproxy-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root / "pg").start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One ``chroma run`` per test session (tests use fresh owners in it)."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma") / "db").start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's Postgres."""
    return postgres_server.new_database()
