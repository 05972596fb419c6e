"""``memproxy serve`` as a real process for crash tests, minus the 10-second model load.

The same settings (config.yaml + MEMPROXY_* environment), app factory, uvicorn options and
signal handling as ``proxy.cli.main``; only the embedder is the deterministic hashing one. With
``PROXY_TEST_SLOW_APPLY=<seconds>``, embedding a batch of texts that mention "(slow)"
takes that long: storing a raw exchange of several messages becomes a point a test can hit.
Usage: python tests/proxy_process.py
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import uvicorn
from conftest import HashingEmbedder

from proxy.app import create_app
from proxy.config_sources import load_settings


class SlowApplyEmbedder(HashingEmbedder):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.delay and len(texts) > 1 and any("(slow)" in t for t in texts):
            time.sleep(self.delay)
        return super().embed(list(texts))


def main() -> int:
    settings = load_settings(None)
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    embedder = SlowApplyEmbedder(float(os.environ.get("PROXY_TEST_SLOW_APPLY", "0")))
    uvicorn.run(
        create_app(settings, embedder=embedder),
        host=settings.server.host, port=settings.server.port,
        log_level=settings.server.log_level, timeout_keep_alive=30, access_log=False,
        server_header=False, date_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
