"""scripts/install's CPU check (scripts/torch_check.py): a pip resolve that brings CUDA is
refused, a CPU one accepted; and the install script stays portable (bash 3.2, no sha256sum)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "torch_check.py"


def pip_report(path: Path, packages: dict[str, str]) -> Path:
    """A `pip install --dry-run --report` as pip writes it (the fields the check reads)."""
    path.write_text(json.dumps({"version": "1", "install": [
        {"metadata": {"name": name, "version": version}} for name, version in packages.items()
    ]}))
    return path


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


@pytest.mark.parametrize(("packages", "status", "summary"), [
    ({"torch": "2.13.0+cpu", "sympy": "1.14", "filelock": "3.20"}, 0, "torch 2.13.0+cpu"),
    ({"torch": "2.13.0", "networkx": "3.5"}, 0, "torch 2.13.0"),  # macOS / CPU-only index
    ({"torch": "2.13.0", "nvidia-cublas-cu12": "12.8", "nvidia-cudnn-cu12": "9.10",
      "triton": "3.5"}, 1, "torch 2.13.0 with 3 CUDA packages (nvidia-cublas-cu12, "
                           "nvidia-cudnn-cu12, triton …)"),
    ({"torch": "2.13.0+cu128"}, 1, "torch 2.13.0+cu128"),
])
def test_a_resolve_that_brings_cuda_is_refused(
    tmp_path: Path, packages: dict[str, str], status: int, summary: str
) -> None:
    result = check("report", str(pip_report(tmp_path / "r.json", packages)))
    assert (result.returncode, result.stdout.strip()) == (status, summary)


def test_this_environments_torch_is_the_pinned_cpu_build() -> None:
    pinned = next(line for line in (ROOT / "scripts" / "install").read_text().splitlines()
                  if line.startswith("TORCH_VERSION="))
    version = pinned.split('"')[1]
    assert f"torch>=2.2,<={version}" in (ROOT / "pyproject.toml").read_text()
    assert check("installed", version).returncode == 0
    assert check("installed", "0.0.1").returncode == 1


def test_install_script_is_portable_bash() -> None:
    script = (ROOT / "scripts" / "install").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "install")]).returncode == 0
    assert "sha256sum" not in script.replace("(sha256sum is not on macOS.)", "")
    assert '"${torch_args[@]}"}' in script  # the empty-array guard bash 3.2 needs


def test_distribution_name_is_not_the_taken_one() -> None:
    """'memproxy' on PyPI is an unrelated project: `pip install memproxy` installs that."""
    text = (ROOT / "pyproject.toml").read_text()
    assert '\nname = "memproxy-server"\n' in text
    assert 'memproxy = "proxy.cli:main"' in text  # the command keeps its name
    install = (ROOT / "scripts" / "install").read_text()
    assert "pip uninstall --quiet --yes memproxy" in install  # a pre-rename venv is cleaned
