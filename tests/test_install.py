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
    assert 'memproxy = "proxy.cli.main:main"' in text  # the command keeps its name
    install = (ROOT / "scripts" / "install").read_text()
    assert "pip uninstall --quiet --yes memproxy" in install  # a pre-rename venv is cleaned


STUB_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for .venv/bin/python: records calls, answers as a machine without the CPU index.
echo "$*" >> "$STUB_DIR/calls"
case "$*" in
  *"torch_check.py installed"*) [ -e "$STUB_DIR/torch-installed" ] ;;
  *"torch_check.py report"*) exec "$REAL_PYTHON" "$@" ;;
  -c*) [ -n "${STUB_REACHABLE:-}" ] ;;  # the CPU index probe
  *"--dry-run"*)
    report="${@: -2:1}"; cp "$STUB_DIR/report.json" "$report" ;;
  *"pip show"*) exit 1 ;;
  *"torch=="*) touch "$STUB_DIR/torch-installed" ;;
  *) exit 0 ;;
esac
"""


def stub_repo(tmp_path: Path) -> Path:
    """The install script, its check and pyproject.toml, with a stub .venv/bin/python."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("scripts/install", "scripts/torch_check.py", "pyproject.toml"):
        (repo / name).write_bytes((ROOT / name).read_bytes())
    (repo / "scripts" / "install").chmod(0o755)
    stub = repo / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    return repo


@pytest.mark.parametrize("cuda", [True, False])
def test_unreachable_cpu_index_falls_back_only_to_a_cpu_build(
    tmp_path: Path, cuda: bool
) -> None:
    if sys.platform != "linux":
        pytest.skip("the CPU index is used on Linux")
    repo = stub_repo(tmp_path)
    packages = {"torch": "2.13.0", "nvidia-cublas-cu12": "12.8"} if cuda else {
        "torch": "2.13.0+cpu"}
    pip_report(tmp_path / "report.json", packages)
    env = {"PATH": "/usr/bin:/bin", "STUB_DIR": str(tmp_path), "REAL_PYTHON": sys.executable,
           "PYTHON": sys.executable}
    result = subprocess.run([str(repo / "scripts" / "install")], env=env, capture_output=True,
                            text=True, timeout=60)
    calls = (tmp_path / "calls").read_text()
    assert "the PyTorch CPU index (https://download.pytorch.org/whl/cpu) is unreachable" in (
        result.stdout)
    if cuda:
        assert result.returncode == 1
        assert "would install torch 2.13.0 with 1 CUDA packages" in result.stderr
        assert "MEMPROXY_TORCH_INDEX" in result.stderr
        installs = [c for c in calls.splitlines() if "torch==" in c and "--dry-run" not in c]
        assert installs == [] and not (tmp_path / "torch-installed").exists()
    else:
        assert result.returncode == 0, result.stderr
        assert "installing torch 2.13.0 (CPU) from pip's configured index (torch 2.13.0+cpu" in (
            result.stdout)
        assert "installing memproxy-server" in result.stdout
        assert (repo / ".venv" / ".memproxy-installed").exists()


@pytest.mark.parametrize(("extra_env", "index"), [
    ({"STUB_REACHABLE": "1"}, "https://download.pytorch.org/whl/cpu"),
    ({"MEMPROXY_TORCH_INDEX": "http://mirror.local/cpu"}, "http://mirror.local/cpu"),
])
def test_torch_comes_from_the_cpu_index_or_the_one_named(
    tmp_path: Path, extra_env: dict[str, str], index: str
) -> None:
    if sys.platform != "linux":
        pytest.skip("the CPU index is used on Linux")
    repo = stub_repo(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "STUB_DIR": str(tmp_path), "REAL_PYTHON": sys.executable,
           "PYTHON": sys.executable, **extra_env}
    result = subprocess.run([str(repo / "scripts" / "install")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (install,) = [c for c in (tmp_path / "calls").read_text().splitlines() if "torch==" in c]
    assert install == f"-m pip install --quiet --index-url {index} torch==2.13.0"
    assert "--dry-run" not in (tmp_path / "calls").read_text()
