"""Cache-friendly injection: one memory block per conversation, kept byte-identical.

Providers cache prompt prefixes (OpenAI from 1,024 tokens, automatically; Anthropic with
``cache_control``). A block that is re-chosen for every question, right after the system
prompt, changes the prefix each turn, and everything after it — the whole history — misses
the cache. So the block chosen at a conversation's first turn (as seen by this process) is
kept, byte for byte, while the memories in it are unchanged (same ids, same text, none
superseded or deleted); memories that become relevant later go in a small late block placed
just before the newest user message, where changing it breaks nothing before it.

A conversation is named by its session (``X-Session-Id``, Open WebUI's chat id) or, without
one, by a digest of its opening messages, which a client resends unchanged on every turn.
The chosen blocks live in this process (LRU-bounded); a replica that has not seen the
conversation chooses its own, which costs one cache miss at the provider, not correctness.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.memory.model import Memory, ScoredMemory

OPENING_TURNS = 2  # system prompt + first user message name a conversation without a session


def conversation_key(
    tenant: str, user_id: str, session_id: str | None, opening: Sequence[str]
) -> str:
    """A stable name for one conversation of one owner."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (tenant, user_id):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    if session_id:
        digest.update(b"session\0" + session_id.encode("utf-8", "surrogatepass"))
    else:
        for text in opening[:OPENING_TURNS]:
            digest.update(b"turn\0" + text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Placement:
    """What one turn injects: the conversation's kept block, and this turn's additions."""

    stable: list[ScoredMemory]
    late: list[ScoredMemory] = field(default_factory=list)
    kept: bool = False  # True: the stable block is the one an earlier turn chose


@dataclass(frozen=True)
class _Chosen:
    memories: tuple[ScoredMemory, ...]

    def matches(self, current: dict[str, Memory | None]) -> bool:
        for scored in self.memories:
            now = current.get(scored.memory.id)
            if now is None or now.superseded_by or now.text != scored.memory.text:
                return False
        return True


class StableBlocks:
    """Thread-safe map of conversation → the memories its block was rendered from."""

    def __init__(self, size: int = 10_000):
        self._chosen: OrderedDict[str, _Chosen] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def place(
        self,
        key: str,
        found: Sequence[ScoredMemory],
        lookup: Callable[[list[str]], dict[str, Memory | None]],
        *,
        late_limit: int,
    ) -> Placement:
        """This turn's placement, given this turn's ranked memories ``found``.

        ``lookup`` returns the current state of memories by id (None: gone); it is called
        only for a conversation seen before. ``late_limit`` bounds the late block.
        """
        with self._lock:
            chosen = self._chosen.get(key)
            if chosen is not None:
                self._chosen.move_to_end(key)
        if chosen is not None:
            ids = [scored.memory.id for scored in chosen.memories]
            # An empty block stays empty: what is found later goes late, the prefix holds.
            if not ids or chosen.matches(lookup(ids)):
                kept = set(ids)
                late = [scored for scored in found if scored.memory.id not in kept]
                return Placement(list(chosen.memories), late[:late_limit], kept=True)
        with self._lock:
            self._chosen[key] = _Chosen(tuple(found))
            self._chosen.move_to_end(key)
            while len(self._chosen) > self._size:
                self._chosen.popitem(last=False)
        return Placement(list(found))

    def __len__(self) -> int:
        with self._lock:
            return len(self._chosen)
