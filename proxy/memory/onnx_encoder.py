"""The embedding model on ONNX Runtime with the ``tokenizers`` library: no torch at run time.

An export directory (written once by proxy/memory/model_export.py, which needs torch and
sentence-transformers) holds ``onnx/model.onnx``, ``tokenizer.json`` and a manifest
(``memproxy-embedding.json``): how the model pools and normalises, its token limit and
dimension, and whether this direct path was checked to give sentence-transformers' own
vectors. The serving process reads only these files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

MANIFEST = "memproxy-embedding.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class EncoderManifest:
    """What the direct path needs to know of an exported model."""

    # False: the model's pipeline is not Transformer → Pooling (mean/cls) → Normalize, or its
    # direct vectors differed from sentence-transformers': it runs on sentence-transformers.
    direct: bool
    dimension: int
    max_length: int = 256
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    format: int = MANIFEST_FORMAT

    @classmethod
    def read(cls, export_dir: Path) -> EncoderManifest | None:
        """The manifest, or None when there is none (or an older format)."""
        try:
            data = json.loads((export_dir / MANIFEST).read_text(encoding="utf-8"))
            manifest = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        if manifest.format != MANIFEST_FORMAT:
            return None
        if manifest.direct and not (export_dir / "onnx" / "model.onnx").is_file():
            return None
        return manifest

    def write(self, export_dir: Path) -> None:
        partial = export_dir / f"{MANIFEST}.partial-{os.getpid()}"
        partial.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(partial, export_dir / MANIFEST)


class OnnxEncoder:
    """Tokenizer → ONNX Runtime session → pooling → L2 norm. Threads may call ``encode`` at
    once (proxy/memory/batcher.py's workers do): the session's runs are thread-safe, and the
    tokenizer's settings are fixed here, before any caller."""

    BATCH = 32  # texts per session run; longer inputs go in length-sorted batches

    def __init__(self, export_dir: Path, manifest: EncoderManifest, threads: int = 0):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        tokenizer.enable_truncation(manifest.max_length)
        saved = tokenizer.padding or {}
        tokenizer.enable_padding(
            pad_id=int(saved.get("pad_id", 0)), pad_type_id=int(saved.get("pad_type_id", 0)),
            pad_token=str(saved.get("pad_token", "[PAD]")),
        )  # to the longest text of a batch, whatever length the export saved
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        # Idle threads sleep instead of spinning: spinning threads take both cores of a small
        # machine away from the event loop after every run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads > 0:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(export_dir / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self._manifest = manifest

    @property
    def dimension(self) -> int:
        return self._manifest.dimension

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if len(texts) <= self.BATCH:
            return self._encode_batch(list(texts))
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
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        given = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        feed = {name: given.get(name, np.zeros_like(mask)) for name in self._inputs}
        hidden = self._session.run([self._output], feed)[0]
        if self._manifest.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled = np.asarray(pooled, dtype=np.float32)
        if self._manifest.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
        return pooled.astype(np.float32, copy=False)
