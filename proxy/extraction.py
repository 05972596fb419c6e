"""Turning a finished exchange into stored memories, in two steps a job can replay.

``extract``: ``raw`` takes the user's own new messages verbatim; ``llm`` asks a model
(structured output) for atomic facts about the user. The worker saves the result in the job.
``apply``: facts that duplicate what the user already has (same normalised text, or cosine ≥
``duplicate_threshold``) are skipped; the rest are stored under ids derived from the job, so
applying the same result twice (a replay after a crash) stores nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel, ValidationError

from proxy.config import ModelRoute, Settings
from proxy.embedding import Embedder
from proxy.jobs import ExtractionJob, ExtractionResult
from proxy.prompts import EXTRACTION_SYSTEM, FACTS_SCHEMA, extraction_user_prompt
from proxy.providers import litellm_module, translate_litellm_error
from proxy.store import Memory, MemoryStore

log = logging.getLogger("memproxy.extraction")


class FactList(BaseModel):
    facts: list[str]


class ExtractionFailed(Exception):
    pass


def normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def parse_facts(content: str) -> list[str]:
    """Validate the model's JSON; tolerate a fenced block or prose around the object."""
    candidates = [content]
    match = re.search(r"\{.*\}", content, re.DOTALL)
    if match:
        candidates.append(match.group(0))
    for candidate in candidates:
        try:
            return FactList.model_validate(json.loads(candidate)).facts
        except (ValueError, ValidationError):
            continue
    raise ExtractionFailed(f"model returned no valid facts JSON: {content[:200]!r}")


def memory_id(job: ExtractionJob, normalised_fact: str) -> str:
    """Stable for one job's fact (a replay writes the same id); random without a job hash."""
    if not job.exchange_hash:
        return uuid.uuid4().hex
    seed = f"{job.exchange_hash}\0{job.created_at!r}\0{normalised_fact}"
    return hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Extractor:
    def __init__(self, settings: Settings, embedder: Embedder, store: MemoryStore):
        self._settings = settings
        self._embedder = embedder
        self._store = store

    async def process(self, job: ExtractionJob) -> list[Memory]:
        """Extract and apply in one go (no job row in between)."""
        return await self.apply(job, await self.extract(job))

    async def extract(self, job: ExtractionJob) -> ExtractionResult:
        mode = self._settings.extraction.mode
        user_id = job.identity.user_id
        texts = [t.strip() for t in job.user_texts if t.strip()]
        if mode == "off" or user_id is None or not texts:
            return ExtractionResult([], mode)
        if mode == "raw":
            return ExtractionResult(texts, "raw")
        known = await anyio.to_thread.run_sync(
            self._related_known, job.identity.tenant, user_id, texts
        )
        facts = await self._ask_model(job, texts, known)
        facts = [f.strip() for f in facts if isinstance(f, str) and f.strip()]
        return ExtractionResult(facts[: self._settings.extraction.max_facts], "llm")

    async def apply(self, job: ExtractionJob, result: ExtractionResult) -> list[Memory]:
        if job.identity.user_id is None or not result.facts:
            return []
        return await anyio.to_thread.run_sync(
            self._store_new, job, result.facts, result.source
        )

    def needs_caller_key(self, job: ExtractionJob) -> bool:
        """Whether the job's model call needs the caller's key (not configured, not ours)."""
        if self._settings.extraction.mode != "llm":
            return False
        route = self._route(job)
        return route.api_key is None and self._upstream_key(route) is None

    def _upstream_key(self, route: ModelRoute) -> str | None:
        own = self._settings.upstream.api_key
        if own is not None and route.api_base == self._settings.upstream_base:
            return own.get_secret_value()
        return None

    def _related_known(self, tenant: str, user_id: str, texts: list[str]) -> list[str]:
        vector = self._embedder.embed(["\n".join(texts)[-2000:]])[0]
        return [
            hit.memory.text for hit in self._store.search(user_id, vector, 10, tenant=tenant)
        ]

    def _store_new(self, job: ExtractionJob, facts: list[str], source: str) -> list[Memory]:
        user_id = job.identity.user_id
        assert user_id is not None
        if not facts:
            return []
        vectors = self._embedder.embed(facts)
        threshold = self._settings.extraction.duplicate_threshold
        kept: list[Memory] = []
        kept_rows: list[int] = []
        seen: set[str] = set()
        for row, fact in enumerate(facts):
            key = normalise(fact)
            if not key or key in seen:
                continue
            nearest = self._store.search(user_id, vectors[row], 1, tenant=job.identity.tenant)
            if nearest and (
                nearest[0].score >= threshold or normalise(nearest[0].memory.text) == key
            ):
                continue
            if kept_rows and float(np.max(vectors[kept_rows] @ vectors[row])) >= threshold:
                continue
            seen.add(key)
            kept_rows.append(row)
            kept.append(
                Memory(
                    user_id=user_id, text=fact, id=memory_id(job, key),
                    created_at=job.created_at, agent_id=job.identity.agent_id,
                    session_id=job.identity.session_id, source=source,
                    tenant=job.identity.tenant,
                )
            )
        self._store.add(
            kept, vectors[kept_rows] if kept_rows else vectors[:0],
            actor=f"job:{job.id}" if job.id is not None else "api",
        )
        log.info("stored %d of %d extracted facts", len(kept), len(facts))
        return kept

    def _route(self, job: ExtractionJob) -> ModelRoute:
        ext = self._settings.extraction
        upstream = self._settings.upstream_base
        if ext.model:
            has_provider = "/" in ext.model
            return ModelRoute(
                model=ext.model if has_provider else f"openai/{ext.model}",
                api_key=ext.api_key,
                api_base=ext.api_base or ("" if has_provider else upstream),
            )
        routed = self._settings.models.get(job.model)
        if routed is not None:
            return routed
        return ModelRoute(model=f"openai/{job.model}", api_base=upstream)

    async def _ask_model(self, job: ExtractionJob, texts: list[str], known: list[str]) -> list[str]:
        route = self._route(job)
        api_key = (
            route.api_key.get_secret_value() if route.api_key else job.api_key
        ) or self._upstream_key(route)
        messages = [
            {"role": "system", "content": EXTRACTION_SYSTEM},
            {
                "role": "user",
                "content": extraction_user_prompt(
                    texts, job.assistant_text, known, job.created_at
                ),
            },
        ]
        schema_format = {
            "type": "json_schema",
            "json_schema": {"name": "memory_facts", "strict": True, "schema": FACTS_SCHEMA},
        }
        last_error: Exception | None = None
        # Strict schema first; providers without it get json_object (the prompt shows the shape).
        for response_format in (schema_format, {"type": "json_object"}):
            try:
                content = await self._complete(route, api_key, messages, response_format)
                return parse_facts(content)
            except ExtractionFailed as exc:
                last_error = exc
        raise ExtractionFailed(str(last_error))

    async def _complete(
        self,
        route: ModelRoute,
        api_key: str | None,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any],
    ) -> str:
        litellm = await litellm_module()
        kwargs: dict[str, Any] = dict(route.extra)
        if route.api_base:
            kwargs["api_base"] = route.api_base
        try:
            response = await litellm.acompletion(
                model=route.model,
                messages=messages,
                response_format=response_format,
                api_key=api_key or "none",
                temperature=0,
                timeout=self._settings.extraction.timeout,
                num_retries=1,
                **kwargs,
            )
        except Exception as exc:
            translated = translate_litellm_error(exc)
            if 400 <= translated.status_code < 500 and response_format["type"] == "json_schema":
                # e.g. "response_format json_schema not supported": try the fallback.
                raise ExtractionFailed(translated.message) from exc
            raise translated from exc
        content = response.choices[0].message.content
        return content if isinstance(content, str) else ""
