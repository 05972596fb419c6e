"""Applying a job's memory operations through the store, idempotently.

Every operation first checks whether it already happened, so a replay of a saved result
(the process died mid-way) changes nothing twice: an add whose id (derived from the job) is
stored, an update whose text is already there, a supersede whose memory is already marked,
a delete of a memory already gone. History rows carry ``job:<id>`` as the actor.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from proxy.extraction.jobs import ExtractionJob
from proxy.memory.embedding import Embedder
from proxy.memory.store import Memory, MemoryStore

log = logging.getLogger("memproxy.extraction")


def normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def memory_id(job: ExtractionJob, normalised_fact: str) -> str:
    """Stable for one job's fact (a replay writes the same id); random without a job hash."""
    if not job.exchange_hash:
        return uuid.uuid4().hex
    seed = f"{job.exchange_hash}\0{job.created_at!r}\0{normalised_fact}"
    return hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def actor_of(job: ExtractionJob) -> str:
    return f"job:{job.id}" if job.id is not None else "api"


def new_memory(job: ExtractionJob, text: str, source: str) -> Memory:
    user_id = job.identity.user_id
    assert user_id is not None
    return Memory(
        user_id=user_id, text=text, id=memory_id(job, normalise(text)),
        created_at=job.created_at, agent_id=job.identity.agent_id,
        session_id=job.identity.session_id, source=source, tenant=job.identity.tenant,
    )


class Reconciler:
    def __init__(self, embedder: Embedder, store: MemoryStore, duplicate_threshold: float):
        self._embedder = embedder
        self._store = store
        self._threshold = duplicate_threshold

    def _own(self, job: ExtractionJob, memory_id: str | None) -> Memory | None:
        memory = self._store.get(memory_id) if memory_id else None
        owner = (job.identity.tenant, job.identity.user_id)
        return memory if memory is not None and memory.owner == owner else None

    def apply(
        self, job: ExtractionJob, operations: Sequence[dict[str, Any]], source: str = "llm"
    ) -> list[Memory]:
        """Blocking. Returns the memories added or changed."""
        texts = [op["text"] for op in operations if op.get("text")]
        vectors = self._embedder.embed(texts) if texts else np.zeros((0, 1), np.float32)
        vector_of = {text: vectors[i] for i, text in enumerate(texts)}
        actor = actor_of(job)
        changed: list[Memory] = []
        adds: list[str] = []
        for op in operations:
            kind, text = op["op"], op.get("text")
            if kind == "add" and text:
                adds.append(text)
                continue
            current = self._own(job, op.get("id"))
            if current is None:
                if kind == "supersede" and text:
                    adds.append(text)  # its memory is gone meanwhile: the new fact stands
                continue
            if kind == "delete":
                self._store.delete(current.id, actor=actor)
            elif kind == "update" and text and not current.superseded_by:
                if current.text != text:
                    updated = self._store.update(
                        current.id, text=text, vector=vector_of[text], actor=actor
                    )
                    changed += [updated] if updated is not None else []
            elif kind == "supersede" and text and not current.superseded_by:
                new = new_memory(job, text, source)
                if self._store.supersede(current.id, new, vector_of[text], actor=actor):
                    changed.append(new)
        if adds:
            rows = np.stack([vector_of[t] for t in adds])
            changed += self.store_new(job, adds, source, rows)
        return changed

    def store_new(
        self, job: ExtractionJob, facts: list[str], source: str, vectors: np.ndarray | None = None
    ) -> list[Memory]:
        """Add facts, skipping ones the user already has (or that this job already stored)."""
        user_id = job.identity.user_id
        if user_id is None or not facts:
            return []
        if vectors is None:
            vectors = self._embedder.embed(facts)
        kept: list[Memory] = []
        kept_rows: list[int] = []
        seen: set[str] = set()
        for row, fact in enumerate(facts):
            key = normalise(fact)
            if not key or key in seen:
                continue
            memory = new_memory(job, fact, source)
            if job.exchange_hash and self._store.get(memory.id) is not None:
                continue  # a replay: stored by this job before
            nearest = self._store.search(user_id, vectors[row], 1, tenant=job.identity.tenant)
            if nearest and (
                nearest[0].score >= self._threshold or normalise(nearest[0].memory.text) == key
            ):
                continue
            if kept_rows and float(np.max(vectors[kept_rows] @ vectors[row])) >= self._threshold:
                continue
            seen.add(key)
            kept_rows.append(row)
            kept.append(memory)
        self._store.add(
            kept, vectors[kept_rows] if kept_rows else vectors[:0], actor=actor_of(job)
        )
        log.info("stored %d of %d extracted facts", len(kept), len(facts))
        return kept
