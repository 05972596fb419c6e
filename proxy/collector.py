"""The garbage collector in the serving process: start-up state is frozen out of its walks.

A full collection walks every object the collector tracks and stops every thread meanwhile.
The serving process tracks ~100k objects once the app is imported and ~430k once litellm is
(its model tables): a full collection took 150 ms idle and 250–340 ms under load, every ~25 s
in the soak (`bench/overhead.py --soak`), and each one timed out every retrieval in flight
(8 at a time, in bursts). What start-up loads lives as long as the process, so ``settle``
moves it out of the collector's reach (``gc.freeze``): once everything has opened, and again
once litellm's import (started in the background at start-up) is done. Frozen objects are
still freed by reference counting when they go; only a reference cycle among objects alive
at those two moments would stay (start-up state, and a request or two in flight).

Only ``memproxy serve`` turns it on (``enable``): a test process that builds many apps would
keep each one's cycles.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("memproxy")

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


def settle() -> None:
    """Collect what start-up left behind, then freeze the rest (when enabled)."""
    if not _enabled:
        return
    gc.collect()
    gc.freeze()
    log.debug("%d objects frozen out of the garbage collector's walks", gc.get_freeze_count())


def frozen_count() -> int:
    return gc.get_freeze_count()
