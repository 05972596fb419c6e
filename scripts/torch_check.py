"""Is this torch CPU-only? Used by scripts/install (stdlib only: runs before anything else).

  python scripts/torch_check.py installed VERSION  exit 0: torch VERSION is installed, no CUDA
  python scripts/torch_check.py report FILE        summarise a `pip install --report` of torch;
                                                   exit 0: a CPU build, 1: it brings CUDA
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys


def is_gpu_package(name: str) -> bool:
    return name.startswith("nvidia-") or name == "triton"


def installed(version: str) -> int:
    try:
        found = md.version("torch")
    except md.PackageNotFoundError:
        return 1
    names = {(d.metadata["Name"] or "").lower() for d in md.distributions()}
    cpu = "+cu" not in found and not any(is_gpu_package(n) for n in names)
    return 0 if found.split("+")[0] == version and cpu else 1


def report(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        items = json.load(f)["install"]
    found = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
    torch = found.get("torch", "?")
    gpu = sorted(n for n in found if is_gpu_package(n))
    more = f" with {len(gpu)} CUDA packages ({', '.join(gpu[:3])} …)" if gpu else ""
    print(f"torch {torch}{more}")
    return 1 if gpu or "+cu" in torch else 0


if __name__ == "__main__":
    command, argument = sys.argv[1:3]
    sys.exit(installed(argument) if command == "installed" else report(argument))
