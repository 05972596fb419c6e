"""Turning a finished exchange into memory changes, in two steps a job can replay.

``extract``: ``raw`` takes the user's own new messages verbatim; ``llm`` makes one
reconciliation call (structured output): the new turn(s) plus the user's most related
memories, numbered 1..n, in; operations add / update / supersede / delete out
(proxy/operations.py maps the numbers back to ids and filters secrets). The worker saves
the result in the job before applying it.
``apply``: each operation through the store, history rows with actor ``job:<id>``. New
memories get ids derived from the job, and every operation checks whether it already
happened (same id stored, same text, already superseded, already gone), so applying the same
result twice (a replay after kill -9) changes nothing. Adds that duplicate a memory the user
already has (same normalised text, or cosine >= ``duplicate_threshold``) are skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio

from proxy.config import ModelRoute, Settings
from proxy.embedding import Embedder
from proxy.jobs import ExtractionJob, ExtractionResult
from proxy.operations import ExtractionFailed, Operation, parse_operations, resolve
from proxy.prompts import (
    EXTRACTION_SYSTEM,
    OPERATIONS_SCHEMA,
    SCHEMA_REMINDER,
    extraction_user_prompt,
)
from proxy.providers import litellm_module, translate_litellm_error
from proxy.ranking import RankingParams, rank_memories
from proxy.reconcile import Reconciler, memory_id, normalise
from proxy.store import Memory, MemoryStore

__all__ = ["ExtractionFailed", "Extractor", "memory_id", "normalise"]

log = logging.getLogger("memproxy.extraction")


class Extractor:
    def __init__(self, settings: Settings, embedder: Embedder, store: MemoryStore):
        self._settings = settings
        self._embedder = embedder
        self._store = store
        self._reconciler = Reconciler(
            embedder, store, settings.extraction.duplicate_threshold
        )
        # exchanges, llm_calls, prompt_tokens, completion_tokens: /metrics per exchange.
        self.usage: Counter[str] = Counter()

    async def process(self, job: ExtractionJob) -> list[Memory]:
        """Extract and apply in one go (no job row in between)."""
        return await self.apply(job, await self.extract(job))

    async def extract(self, job: ExtractionJob) -> ExtractionResult:
        mode = self._settings.extraction.mode
        user_id = job.identity.user_id
        texts = [t.strip() for t in job.user_texts if t.strip()]
        if mode == "off" or user_id is None or not texts:
            return ExtractionResult([], mode, merged=list(job.merged))
        if mode == "raw":
            return ExtractionResult(texts, "raw", merged=list(job.merged))
        self.usage["exchanges"] += 1 + len(job.merged)
        known = await anyio.to_thread.run_sync(
            self._related_known, job.identity.tenant, user_id, texts
        )
        shown = {n: memory.id for n, memory in enumerate(known, 1)}
        operations = await self._ask_model(
            job, texts, [(n, m.text, m.created_at) for n, m in enumerate(known, 1)]
        )
        resolved = resolve(operations, shown)[: self._settings.extraction.max_facts]
        return ExtractionResult(
            [op["text"] for op in resolved if op["text"]], "llm", resolved, list(job.merged)
        )

    async def apply(self, job: ExtractionJob, result: ExtractionResult) -> list[Memory]:
        if job.identity.user_id is None:
            return []
        if result.operations:
            return await anyio.to_thread.run_sync(
                self._reconciler.apply, job, result.operations
            )
        if not result.facts:
            return []
        return await anyio.to_thread.run_sync(
            self._reconciler.store_new, job, result.facts, result.source
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

    def _related_known(self, tenant: str, user_id: str, texts: list[str]) -> list[Memory]:
        """The user's memories most related to the new turn (hybrid ranked), for the prompt."""
        wanted = self._settings.extraction.related_memories
        if wanted <= 0:
            return []
        query = "\n".join(texts)[-2000:]
        vector = self._embedder.embed([query])[0]
        found = self._store.candidates(user_id, vector, query, tenant=tenant)
        if not found.eligible.any():
            return []
        ranked = rank_memories(
            found.dense, found.keyword, wanted, RankingParams(mmr_lambda=1.0),
            created_at=found.created_at, eligible=found.eligible,
        )
        return [found.memories[int(i)] for i in ranked.indices]

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

    async def _ask_model(
        self, job: ExtractionJob, texts: list[str], known: list[tuple[int, str, float]]
    ) -> list[Operation]:
        """One reconciliation answer: json_schema (strict) first; json_object with a schema
        reminder when the provider rejects it or the answer does not parse (each answer gets a
        repair pass); at most ``llm_attempts`` calls, with backoff between them."""
        settings = self._settings.extraction
        route = self._route(job)
        api_key = (
            route.api_key.get_secret_value() if route.api_key else job.api_key
        ) or self._upstream_key(route)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": EXTRACTION_SYSTEM},
            {"role": "user", "content": extraction_user_prompt(
                texts, job.assistant_text, known, job.created_at
            )},
        ]
        schema_format = {
            "type": "json_schema",
            "json_schema": {"name": "memory_operations", "strict": True,
                            "schema": OPERATIONS_SCHEMA},
        }
        use_schema = True
        last_error: Exception | None = None
        for attempt in range(settings.llm_attempts):
            if attempt:
                await anyio.sleep(settings.retry_backoff_seconds * 2 ** (attempt - 1))
            asked = messages
            if not use_schema:
                asked = [*messages, {"role": "system", "content": SCHEMA_REMINDER}]
                if last_error is not None:
                    asked.append({"role": "user", "content": (
                        f"Your previous answer could not be used ({last_error}). "
                        "Answer again with the JSON object only."
                    )[:1000]})
            try:
                content = await self._complete(
                    route, api_key, asked,
                    schema_format if use_schema else {"type": "json_object"},
                )
            except ExtractionFailed:  # the provider rejected json_schema: no answer to fix
                use_schema = False
                continue
            try:
                return parse_operations(content)
            except ExtractionFailed as exc:
                last_error = exc
                use_schema = False
        self.usage["failed_calls"] += 1
        raise ExtractionFailed(str(last_error or "no usable answer"))

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
                num_retries=0,  # our own attempts (and the job's) retry
                **kwargs,
            )
        except Exception as exc:
            translated = translate_litellm_error(exc)
            if 400 <= translated.status_code < 500 and response_format["type"] == "json_schema":
                # e.g. "response_format json_schema not supported": try the fallback.
                raise ExtractionFailed(translated.message) from exc
            raise translated from exc
        self.usage["llm_calls"] += 1
        usage = getattr(response, "usage", None)
        self.usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.usage["completion_tokens"] += int(getattr(usage, "completion_tokens", 0) or 0)
        content = response.choices[0].message.content
        return content if isinstance(content, str) else ""
