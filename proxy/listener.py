"""The server's listening socket, bound before anything else is opened.

uvicorn binds only after the app's lifespan has started (data dir, store, embedder, workers:
tens of seconds on a cold start), so a port already in use was reported that late. Binding
first makes it a message in milliseconds, with nothing opened.
"""

from __future__ import annotations

import socket


class CannotListen(OSError):
    pass


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port`` (uvicorn listens on it); ``CannotListen`` if not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (another process holds it: choose --port / server.port / MEMPROXY_PORT)"
        in_use = exc.errno == 98 or "in use" in str(exc.strerror)
        raise CannotListen(
            f"cannot listen on {host}:{port}: {exc.strerror}{hint if in_use else ''}"
        ) from exc
    sock.set_inheritable(True)
    return sock
