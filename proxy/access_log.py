"""The optional access log (``server.access_log``): one line per request on
``memproxy.access``, e.g. ``POST /v1/chat/completions 200 memory=injected injected=3 41.2ms``.

Pure ASGI (a streamed answer is never held back); the path is logged without its query
string, which may carry credentials, and no header but the memory ones is read. The latency
runs until the response (a stream included) has been sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from proxy.gateway.flow import COUNT_HEADER, STATUS_HEADER

log = logging.getLogger("memproxy.access")

_STATUS = STATUS_HEADER.lower().encode("latin-1")
_COUNT = COUNT_HEADER.lower().encode("latin-1")


class AccessLog:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "memory": "-", "injected": "-"}

        async def observe(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == _STATUS:
                        seen["memory"] = value.decode("latin-1")
                    elif name.lower() == _COUNT:
                        seen["injected"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            log.info("%s %s %s memory=%s injected=%s %.1fms", scope["method"], scope["path"],
                     seen["status"], seen["memory"], seen["injected"],
                     (time.perf_counter() - started) * 1000)
