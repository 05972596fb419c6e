"""Starting the benchmarks' servers: a free loopback port, and waiting until one answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_fake_upstream(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The tests' fake upstream in a process of its own (bench/_serve_fake.py), output in
    ``log``; returns it and its base URL (without /v1). Not waited for: see ``wait_ready``."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_serve_fake.py")), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until ``url`` answered 200; RuntimeError when the process exits or time is up."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate, then kill what has not exited after 15 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
