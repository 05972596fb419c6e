"""A pure-ASGI streamed response that relays chunks as they arrive.

Unlike a buffered response it sends every chunk the moment the source yields it, watches
for the client going away, and always closes the source (which cancels the upstream
request) — on completion, on disconnect and on error. ``on_finish(completed)`` runs last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

import anyio
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("memproxy.relay")


class RelayResponse:
    def __init__(
        self,
        status_code: int,
        headers: Sequence[tuple[str, str]],
        chunks: AsyncGenerator[bytes, None],
        on_finish: Callable[[bool], Awaitable[None]] | None = None,
    ):
        self.status_code = status_code
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._chunks = chunks
        self._on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch_disconnect)
                await send(
                    {"type": "http.response.start", "status": self.status_code,
                     "headers": self.headers}
                )
                async for chunk in self._chunks:
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                completed = True
                group.cancel_scope.cancel()
        except Exception as exc:  # anyio wraps errors in an ExceptionGroup
            # Headers are already sent: the client sees a truncated stream, not a 500.
            log.warning("stream ended early: %r", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()
                if self._on_finish is not None:
                    await self._on_finish(completed)
