"""Freed heap memory is overwritten, so that no secret outlives its buffer in a file.

Found by tests/test_anthropic_messages.py (the caller's key never on disk): Chroma's HNSW
index allocates its element storage with ``malloc`` and persists all of it, the slots it has
not filled yet included (``data_level0.bin``). glibc hands ``malloc`` memory that earlier
buffers freed — request headers among them — so now and then a caller's API key, which
memproxy never writes anywhere, was written to disk inside those unused slots.

glibc's ``M_PERTURB`` fills every freed block with a fixed byte (and every new one with its
complement): a freed request buffer no longer carries the key to whoever reuses the memory.
It costs one memset per allocation and free. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("memproxy")

M_PERTURB = -6  # glibc <malloc.h>
PERTURB_BYTE = 0xA5


def scrub_freed_memory() -> bool:
    """Turn it on for this process (idempotent); False where the C library has no mallopt."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    on = bool(mallopt(M_PERTURB, PERTURB_BYTE))
    if not on:
        log.warning("freed memory is not scrubbed (mallopt M_PERTURB refused)")
    return on
