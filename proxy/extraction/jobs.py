"""An extraction job: one finished exchange whose facts are still to be stored.

What a job holds is what the durable queue (proxy/extraction/queue.py) stores — except the caller's
API key, which lives in process memory only (proxy/extraction/workers.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.gateway.identity import Identity

STATES = ("queued", "running", "waiting_key", "done", "dead")
UNFINISHED = ("queued", "running", "waiting_key")
# Identity fields that say whose memory it is (tenant fields included as they appear);
# the rest say how the user talked to us.
_NOT_OWNER = ("agent_id", "session_id", "mode")


def owner_of(identity: Identity) -> str:
    """The memory owner's key: jobs with the same owner are applied in order."""
    owned = {k: v for k, v in dataclasses.asdict(identity).items() if k not in _NOT_OWNER}
    return json.dumps(owned, sort_keys=True, ensure_ascii=False)


def exchange_hash(identity: Identity, messages: Sequence[Any]) -> str:
    """Same owner and agent, same conversation (system prompts aside): the same exchange.

    A client's retry and a regenerated answer send the same messages; the system prompt is
    left out because frontends put the current time in it.
    """
    conversation = [
        m for m in messages
        if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))
    ]
    payload = json.dumps(
        [owner_of(identity), identity.agent_id, conversation],
        sort_keys=True, ensure_ascii=False, default=str,
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ExtractionResult:
    """What extraction produced, saved before it is applied.

    ``facts``: texts the result would store (raw mode: all of it; llm mode: the texts of its
    operations, for listings). ``operations`` (llm mode): ``{"op", "id", "text"}`` with the
    real memory ids already mapped back from the numbers the model saw, so a replay applies
    exactly what was decided. ``merged``: ids of later jobs coalesced into this one.
    """

    facts: list[str]
    source: str  # raw | llm
    operations: list[dict[str, Any]] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        data: dict[str, Any] = {"facts": self.facts, "source": self.source}
        if self.operations:
            data["operations"] = self.operations
        if self.merged:
            data["merged"] = self.merged
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ExtractionResult:
        data = json.loads(text)
        return cls(
            [str(f) for f in data["facts"]], str(data["source"]),
            [dict(op) for op in data.get("operations", [])],
            [int(i) for i in data.get("merged", [])],
        )


@dataclass
class ExtractionJob:
    identity: Identity
    user_texts: list[str]
    assistant_text: str
    model: str
    # Memory only: set by the worker from the in-process key map, never stored.
    api_key: str | None = field(default=None, repr=False, compare=False)
    created_at: float = field(default_factory=time.time)
    exchange_hash: str = ""
    has_caller_key: bool = False  # the request carried a key (whether it is still known)
    id: int | None = None
    attempts: int = 0
    result: ExtractionResult | None = None
    merged: list[int] = field(default_factory=list)  # later jobs coalesced into this one

    @property
    def owner(self) -> str:
        return owner_of(self.identity)


@dataclass
class JobRow:
    """A job as `memproxy jobs list` shows it."""

    id: int
    state: str
    user_id: str | None
    attempts: int
    created_at: float
    run_after: float
    finished_at: float | None
    last_error: str | None
    facts: int | None  # how many facts the saved result holds

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class JobStats:
    queued: int = 0  # waiting for a first attempt
    failed: int = 0  # queued again after a failed attempt (backing off)
    running: int = 0
    waiting_key: int = 0
    dead: int = 0
    done: int = 0
    lag_seconds: float = 0.0  # age of the oldest unfinished job


def identity_from_json(text: str) -> Identity:
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(Identity)}
    return Identity(**{k: v for k, v in data.items() if k in known})
