"""Serve the tests' FakeUpstream in this process (the benchmarks run it as a subprocess).

    .venv/bin/python bench/_serve_fake.py --port 9100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_upstream import FakeUpstream  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    fake = FakeUpstream()
    uvicorn.run(
        fake.app, host=args.host, port=args.port, lifespan="off", log_level="warning",
        access_log=False, timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
