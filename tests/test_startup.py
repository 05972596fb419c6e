"""Start-up: a busy port is reported before anything is opened; "ready" only when ready;
a degraded start says so; upstream failures are logged with the URL, never a key; the
optional access log."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from proxy.cli import main


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
