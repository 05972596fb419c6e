"""The serving path without torch: the exported model on ONNX Runtime + ``tokenizers``, its
concurrent queries batched on one inference thread, and a served process that answers its
first chat with memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fake_upstream import FakeUpstream

from proxy.config import EmbeddingSettings
from proxy.memory.batcher import InferenceBatcher
from proxy.memory.embedding import (
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    cpu_count,
    onnx_export_dir,
    open_embedder,
)
from proxy.memory.onnx_encoder import EncoderManifest

TEXTS = [
    "User's sister Ana lives in Lisbon.",
    "What did I tell you about my sister and Lisbon?",
    "x",
    "Ünïcödé, emoji 🎉 and a right-to-left word: שלום",
    "User is building an app in Next.js with a Postgres backend. " * 60,  # truncated
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-models")


def _embed_in_a_fresh_process(settings_args: str, models_dir: Path) -> dict[str, Any]:
    """TEXTS embedded by ``open_embedder(EmbeddingSettings(<settings_args>))`` in a new
    process: the embedder's kind and name, whether torch or sentence-transformers got
    imported, and the vectors."""
    code = (
        "import sys, json; from pathlib import Path;"
        "from proxy.config import EmbeddingSettings;"
        "from proxy.memory.embedding import open_embedder;"
        f"e = open_embedder(EmbeddingSettings({settings_args}), Path({str(models_dir)!r}));"
        f"v = e.embed({TEXTS!r});"
        "print(json.dumps({'kind': type(e).__name__, 'name': e.name,"
        " 'torch': 'torch' in sys.modules, 'st': 'sentence_transformers' in sys.modules,"
        " 'vectors': v.tolist()}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.e2e
def test_the_onnx_path_gives_sentence_transformers_vectors_without_importing_torch(
    models_dir: Path,
) -> None:
    settings = EmbeddingSettings(quantize="none")
    got = _embed_in_a_fresh_process("quantize='none'", models_dir)
    assert got["kind"] == "OnnxEmbedder"
    assert not got["torch"] and not got["st"]  # the export ran in a child process
    manifest = EncoderManifest.read(onnx_export_dir(settings, models_dir))
    assert manifest is not None and manifest.direct and manifest.max_length == 256

    reference = SentenceTransformerEmbedder(settings, models_dir).embed(TEXTS)
    np.testing.assert_allclose(np.asarray(got["vectors"], dtype=np.float32), reference,
                               atol=1e-4)


@pytest.mark.e2e
def test_concurrent_queries_share_batches_and_each_gets_its_own_vector(
    models_dir: Path,
) -> None:
    embedder = open_embedder(EmbeddingSettings(quantize="none", query_cache_size=0), models_dir)
    assert isinstance(embedder, OnnxEmbedder)
    try:
        questions = [f"Question {i}: what did I say about {city}?"
                     for i, city in enumerate(["Lisbon", "Osaka", "Nairobi", "Oslo"] * 16)]
        alone = np.stack([embedder.embed([q])[0] for q in questions])
        before = embedder.batcher.batches
        with ThreadPoolExecutor(32) as pool:
            together = np.stack(list(pool.map(lambda q: embedder.embed([q])[0], questions)))
        np.testing.assert_allclose(together, alone, atol=1e-5)
        assert embedder.batcher.batches - before < len(questions)  # some ran together
    finally:
        embedder.close()


@pytest.mark.e2e
def test_a_quantized_models_query_vector_does_not_depend_on_other_callers(
    models_dir: Path,
) -> None:
    """int8 scales activations per run: sharing a run with other callers' texts would move a
    query's vector (cosine ~0.99), so concurrent callers never share one."""
    embedder = open_embedder(EmbeddingSettings(query_cache_size=0), models_dir)
    assert isinstance(embedder, OnnxEmbedder) and embedder.name.endswith("-int8")
    try:
        questions = [f"Question {i}: what did I say about {city}?"
                     for i, city in enumerate(["Lisbon", "Osaka", "Nairobi", "Oslo"] * 8)]
        # One worker per core, each run on one core; concurrent runs must not mix anything.
        assert embedder.batcher.workers == min(cpu_count(), 8)
        alone = np.stack([embedder.embed([q])[0] for q in questions])
        shared_run = embedder.batcher._encode(questions)  # what one shared run would give
        assert not np.allclose(shared_run, alone, atol=1e-3)
        with ThreadPoolExecutor(32) as pool:
            together = np.stack(list(pool.map(lambda q: embedder.embed([q])[0], questions)))
        np.testing.assert_array_equal(together, alone)
    finally:
        embedder.close()


@pytest.mark.e2e
def test_the_int8_export_keeps_the_full_models_vectors_and_runs_without_torch(
    models_dir: Path,
) -> None:
    got = _embed_in_a_fresh_process("", models_dir)  # int8: the default
    assert got["name"].endswith("-int8") and not got["torch"]
    quantized = onnx_export_dir(EmbeddingSettings(quantize="int8"), models_dir)
    full = onnx_export_dir(EmbeddingSettings(quantize="none"), models_dir)
    assert quantized.name == full.name + "-int8"
    # A quarter of the weights' bytes: the model really is the quantized one.
    assert (quantized / "onnx" / "model.onnx").stat().st_size < \
        (full / "onnx" / "model.onnx").stat().st_size / 3
    vectors = np.asarray(got["vectors"], dtype=np.float32)
    reference = open_embedder(EmbeddingSettings(quantize="none", query_cache_size=0), models_dir)
    try:
        cosines = np.sum(vectors * reference.embed(TEXTS), axis=1)
    finally:
        reference.close()  # type: ignore[union-attr]
    assert cosines.min() >= 0.95 and not np.allclose(cosines, 1.0, atol=1e-6)
    assert np.median(cosines) >= 0.99  # sentences keep their direction


def test_a_bulk_job_does_not_hold_a_query_behind_it() -> None:
    order: list[str] = []
    started = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        started.set()
        time.sleep(0.01)
        order.append(texts[0].split()[0])
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = InferenceBatcher(encode, 2, max_batch=64)
    try:
        bulk = threading.Thread(target=batcher.encode, args=([f"bulk {i}" for i in range(640)],))
        bulk.start()
        started.wait(5)
        assert batcher.encode(["query now"]).shape == (1, 2)
        bulk.join(10)
        assert order.index("query") <= 2  # after at most the chunks already taken
        assert len(order) == 11
    finally:
        batcher.close()


def test_workers_run_callers_side_by_side_and_all_stop_on_close() -> None:
    inside = threading.Barrier(2, timeout=5)  # passes only when two runs are in at once

    def encode(texts: list[str]) -> np.ndarray:
        inside.wait()
        return np.full((len(texts), 2), float(len(texts[0])), dtype=np.float32)

    batcher = InferenceBatcher(encode, 2, max_batch=1, workers=2)
    assert batcher.workers == 2
    try:
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda text: batcher.encode([text]), ["a", "bbb"]))
        assert [g[0, 0] for g in got] == [1.0, 3.0]  # each caller its own rows
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.encode(["after close"])


def test_a_failing_model_fails_its_callers_and_the_thread_goes_on() -> None:
    calls = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.zeros((len(texts), 3), dtype=np.float32)

    batcher = InferenceBatcher(encode, 3)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            batcher.encode(["boom"])
        assert batcher.encode(["fine", "too"]).shape == (2, 3)
        assert batcher.encode([]).shape == (0, 3)
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.encode(["after close"])


@pytest.mark.e2e
def test_a_served_proxy_holds_no_torch_and_its_first_chat_is_served_with_memory(
    tmp_path: Path, models_dir: Path,
) -> None:
    data = tmp_path / "data"
    with FakeUpstream() as upstream:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MEMPROXY_")},
            "MEMPROXY_DATA_DIR": str(data), "MEMPROXY_UPSTREAM_URL": upstream.url,
            "MEMPROXY_EXTRACTION_MODE": "off", "MEMPROXY_EMBEDDING__MODELS_DIR": str(models_dir),
            "HF_HUB_OFFLINE": "1", "MEMPROXY_PORT": str(_free_port()),
        }
        base = f"http://127.0.0.1:{env['MEMPROXY_PORT']}"
        first = _serve(env)
        try:
            _wait_ready(base, first)
            added = httpx.post(base + "/v1/memories", json={
                "user_id": "ana", "infer": False, "text": "My sister lives in Lisbon."})
            assert added.status_code in (200, 201), added.text
        finally:
            first.terminate()
            first.wait(30)
        served = _serve(env)  # a restart: nothing cached, the model not yet run
        try:
            _wait_ready(base, served)
            maps = Path(f"/proc/{served.pid}/maps").read_text()
            assert "libtorch" not in maps and "torch/lib" not in maps
            # Start-up state is out of the garbage collector's full walks (proxy/collector.py).
            frozen = [line for line in httpx.get(base + "/metrics").text.splitlines()
                      if line.startswith("memproxy_gc_frozen_objects ")]
            assert frozen and float(frozen[0].split()[1]) > 50_000
            reply = httpx.post(base + "/v1/chat/completions", headers={"X-User-Id": "ana"},
                               json={"model": "m", "messages": [
                                   {"role": "user", "content": "Where does my sister live?"}]},
                               timeout=30)
            assert reply.status_code == 200
            assert reply.headers["x-memory-status"] == "injected"
            assert "Lisbon" in json.dumps(upstream.chat_requests()[-1].json["messages"])
        finally:
            served.terminate()
            served.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the proxy exited"
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the proxy did not become ready")
