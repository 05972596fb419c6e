"""Counting tokens for the memory budget: the target model's tokenizer when it is cheap.

Measured (2 cores): importing litellm takes ~6 s and its first ``token_counter`` call ~0.9 s
(loading the tiktoken encoding); after that a memory line costs ~0.07 ms. So the hot path
uses litellm's counter only once litellm is already imported (the app imports it in the
background at start) and the model's tokenizer has been warmed, off the request, in a
background thread. Until then — and for any failure — the fast estimate counts.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections import OrderedDict

log = logging.getLogger("memproxy.tokens")


def estimate_tokens(text: str) -> int:
    # ~4 characters per token for English; bullets and dates add a few.
    return math.ceil(len(text) / 4) + 6


class TokenCounter:
    """Thread-safe; ``count(text, model)`` never blocks on an import or a tokenizer load."""

    LINE_OVERHEAD = 6  # the "- [2024-05-01] " prefix of an injected line

    def __init__(self, cache_size: int = 20_000, max_models: int = 64):
        self._ready: set[str] = set()
        self._warming: set[str] = set()
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._cache_size = cache_size
        self._max_models = max_models
        self._lock = threading.Lock()

    def count(self, text: str, model: str | None = None) -> int:
        if not model:
            return estimate_tokens(text)
        key = (model, text)
        with self._lock:
            found = self._cache.get(key)
            ready = model in self._ready
        if found is not None:
            return found
        litellm = sys.modules.get("litellm")
        if litellm is None:
            return estimate_tokens(text)
        if not ready:
            self._warm(model)
            return estimate_tokens(text)
        try:
            counted = int(litellm.token_counter(model=model, text=text)) + self.LINE_OVERHEAD
        except Exception:
            return estimate_tokens(text)
        with self._lock:
            self._cache[key] = counted
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return counted

    def uses_tokenizer(self, model: str) -> bool:
        with self._lock:
            return model in self._ready

    def _warm(self, model: str) -> None:
        with self._lock:
            if model in self._warming or len(self._warming) >= self._max_models:
                return
            self._warming.add(model)

        def load() -> None:
            try:
                sys.modules["litellm"].token_counter(model=model, text="warm up")
            except Exception as exc:  # no tokenizer for it: the estimate stays
                log.info("no tokenizer for %s (%s); estimating tokens", model, exc)
                return
            with self._lock:
                self._ready.add(model)

        threading.Thread(target=load, name="memproxy-tokenizer", daemon=True).start()
