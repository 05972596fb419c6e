from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_upstream import FakeUpstream
from servers import ThreadedServer
from shared_servers import chroma_server, database_url, postgres_server  # noqa: F401 (fixtures)

from proxy.app import create_app
from proxy.config import EmbeddingSettings, Settings
from proxy.config_sources import load_settings
from proxy.memory.embedding import OnnxEmbedder, SentenceTransformerEmbedder, open_embedder


class HashingEmbedder:
    """Deterministic bag-of-words embedder: texts sharing words get similar vectors."""

    dimension = 256

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest())
                out[row, bucket % self.dimension] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MEMPROXY_* variable or data dir leaks into or between tests."""
    import os

    for name in list(os.environ):
        if name.startswith("MEMPROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def settings(tmp_path: Path, upstream: FakeUpstream) -> Settings:
    return load_settings(
        None,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "upstream.url": upstream.url,
            "anthropic.url": upstream.url,  # the fake speaks /v1/messages too
            "upstream.connect_timeout": 2.0,
            "extraction.mode": "raw",
            "store.shards": 4,
        },
    )


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture(scope="session")
def real_embedder(
    tmp_path_factory: pytest.TempPathFactory,
) -> OnnxEmbedder | SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 as the proxy serves it, ONNX-exported once per session."""
    return open_embedder(EmbeddingSettings(), tmp_path_factory.mktemp("models"))


@pytest.fixture
def start_proxy(
    settings: Settings, hashing_embedder: HashingEmbedder
) -> Iterator[Callable[..., ThreadedServer]]:
    """Start the real app under uvicorn on a loopback port; stopped after the test."""
    running: list[ThreadedServer] = []

    def start(
        settings: Settings = settings, embedder: Any = hashing_embedder, store: Any = None
    ) -> ThreadedServer:
        server = ThreadedServer(create_app(settings, embedder=embedder, store=store)).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll until predicate() is truthy (background extraction); fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
