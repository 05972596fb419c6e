"""Turning a finished exchange into memory changes, in two steps a job can replay.

``extract`` decides, ``apply`` writes (the worker saves the decision in the job in between).
The model proposes, memproxy decides (proxy/extraction/guards.py):

1. The user's new turn is split into sentences (proxy/extraction/statements.py). Questions,
   greetings, tasks for the assistant and planted instructions change nothing; a turn with no
   statement and no forget request ends here, with no LLM call.
2. Forget requests are applied deterministically: the memories naming the target lose the
   clause that names it, or go when nothing else is left. A model is never asked to delete.
3. ``llm``: one call turns the statement sentences (nothing else: no memories, no assistant
   reply, no annotations) into candidate facts; each is normalised (third person, prompt
   annotations and secrets out) and must be grounded in the user's words. ``raw``: the
   statement sentences themselves, secrets filtered the same way.
4. Each fact is compared with the user's nearest memories: a duplicate is dropped; with no
   memory on the same topic it is added; otherwise a one-word relation call (``same``,
   ``replaces``, ``more_detail``, ``separate``) picks supersede (history kept), update (only if
   nothing the old fact said is lost) or add. ``extraction.decisions: add_only`` skips it.

``apply``: each operation through the store, history rows with actor ``job:<id>``, idempotent
(see proxy/extraction/reconcile.py). Every rejection is counted in ``guard_events``
(→ ``/metrics``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np

from proxy.config import ModelRoute, Settings
from proxy.extraction.guards import (
    believable_same,
    forget_matches,
    forget_terms,
    grounding,
    keeps_information,
    normalise_fact,
    restates,
    same_topic,
    says_nothing_new,
    without_target,
)
from proxy.extraction.jobs import ExtractionJob, ExtractionResult
from proxy.extraction.operations import ExtractionFailed, Relation, parse_facts, parse_relation
from proxy.extraction.prompts import (
    FACTS_SCHEMA,
    FACTS_SYSTEM,
    RELATION_SCHEMA,
    RELATION_SYSTEM,
    facts_prompt,
    relation_prompt,
    schema_reminder,
)
from proxy.extraction.reconcile import Reconciler, memory_id, normalise
from proxy.extraction.secrets import keeps_a_secret, scrub_fact
from proxy.extraction.statements import forget_targets, statements_of
from proxy.gateway.providers import litellm_module, translate_litellm_error
from proxy.memory.embedding import Embedder
from proxy.memory.store import Memory, MemoryStore

# The model of a job from /v1/messages (gateway/dialects/anthropic_messages.py): litellm's name.
ANTHROPIC_JOB_PREFIX = "anthropic/"

__all__ = ["ExtractionFailed", "Extractor", "memory_id", "normalise"]

log = logging.getLogger("memproxy.extraction")

# The user adds to what they said before rather than replacing it.
_ADDITIVE = re.compile(r"\b(?:also|too|as\s+well|another|second|both|in\s+addition)\b", re.I)


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
        # What the guards refused or changed, by reason: /metrics.
        self.guard_events: Counter[str] = Counter()

    async def process(self, job: ExtractionJob) -> list[Memory]:
        """Extract and apply in one go (no job row in between)."""
        return await self.apply(job, await self.extract(job))

    async def extract(self, job: ExtractionJob) -> ExtractionResult:
        mode = self._settings.extraction.mode
        user_id = job.identity.user_id
        texts = [t.strip() for t in job.user_texts if t.strip()]
        empty = ExtractionResult([], mode, merged=list(job.merged))
        if mode == "off" or user_id is None or not texts:
            return empty
        statements = statements_of(texts)
        requests = forget_targets(texts)
        targets = [forget_terms(t) for t in requests]
        if not statements and not targets:
            self.guard_events["no_statement"] += 1  # a question or a greeting: no call
            return empty
        if mode == "llm":
            self.usage["exchanges"] += 1 + len(job.merged)
        refused_before = self._refused()
        operations = await anyio.to_thread.run_sync(
            self._forget_operations, job, list(zip(requests, targets, strict=True))
        )
        touched = {op["id"] for op in operations}
        proposed: list[str] = []
        if statements:
            user_words = "\n".join(statements)
            if mode == "raw":
                proposed = statements
            else:
                proposed = await self._ask_facts(job, statements)
            facts = self._checked_facts(proposed, user_words, targets, grounded=mode == "llm")
            operations += await self._decide(job, facts, user_words, touched, mode)
        kinds = Counter(op["op"] for op in operations)
        # Counts only: what users said stays out of the log at INFO.
        log.info(
            "job %s: %d proposed, %d refused by the guards; %s", job.id, len(proposed),
            self._refused() - refused_before,
            ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no change",
        )
        return ExtractionResult(
            [op["text"] for op in operations if op.get("text")], mode, operations,
            list(job.merged),
        )

    async def apply(self, job: ExtractionJob, result: ExtractionResult) -> list[Memory]:
        if job.identity.user_id is None:
            return []
        if result.operations:
            return await anyio.to_thread.run_sync(
                self._reconciler.apply, job, result.operations, result.source
            )
        if not result.facts:
            return []
        # A result saved by an earlier version (facts only).
        return await anyio.to_thread.run_sync(
            self._reconciler.store_new, job, result.facts, result.source
        )

    def _refused(self) -> int:
        return sum(n for event, n in self.guard_events.items() if event.startswith("rejected"))

    def needs_caller_key(self, job: ExtractionJob) -> bool:
        """Whether the job's model call needs the caller's key (not configured, not ours)."""
        if self._settings.extraction.mode != "llm":
            return False
        route = self._route(job)
        return route.api_key is None and self._upstream_key(route) is None

    # -- deciding ----------------------------------------------------------------------
    def _checked_facts(
        self, proposed: list[str], user_words: str, targets: list[set[str]], grounded: bool
    ) -> list[str]:
        """Normalised, grounded, not about what is being forgotten, no repeats."""
        events = self.guard_events
        kept: list[str] = []
        seen: set[str] = set()
        for text in proposed:
            fact = normalise_fact(text, user_words) if grounded else scrub_fact(text.strip())
            if fact is None or keeps_a_secret(fact, user_words):
                events["rejected_empty_or_secret"] += 1
                continue
            if len(fact) > self._settings.store.max_memory_chars:
                events["rejected_too_long"] += 1  # the store would refuse it anyway
                continue
            if grounded and fact != " ".join(text.split()).rstrip(" ."):
                events["rewritten"] += 1
            if grounded and grounding(fact, user_words) < self._settings.extraction.min_grounding:
                events["rejected_not_grounded"] += 1
                log.debug("rejected (not in the user's words): %r", fact[:200])
                continue
            if any(forget_matches(fact, t) for t in targets):
                events["rejected_forgotten"] += 1
                continue
            key = normalise(fact)
            if key in seen:
                events["rejected_duplicate"] += 1
                continue
            seen.add(key)
            kept.append(fact)
        return kept[: self._settings.extraction.max_facts]

    def _forget_operations(
        self, job: ExtractionJob, targets: list[tuple[str, set[str]]]
    ) -> list[dict[str, Any]]:
        """Blocking. Remove what each forget request (its words, their terms) names, only that."""
        user_id = job.identity.user_id
        assert user_id is not None
        operations: list[dict[str, Any]] = []
        for query, target in targets:
            if not target:
                self.guard_events["forget_unresolved"] += 1
                continue
            vector = self._embedder.embed([query])[0]
            found = self._store.candidates(user_id, vector, query, tenant=job.identity.tenant)
            matched = 0
            for row, memory in enumerate(found.memories):
                done = {op["id"] for op in operations}
                if not found.eligible[row] or memory.id in done:
                    continue
                if not forget_matches(memory.text, target):
                    continue
                matched += 1
                rest = without_target(memory.text, target)
                if rest is None:
                    operations.append({"op": "delete", "id": memory.id, "text": None})
                else:
                    operations.append({"op": "update", "id": memory.id, "text": rest})
                    self.guard_events["forget_partial"] += 1
            if not matched:
                self.guard_events["forget_unresolved"] += 1
        return operations

    async def _decide(
        self, job: ExtractionJob, facts: list[str], user_words: str, touched: set[str],
        mode: str,
    ) -> list[dict[str, Any]]:
        if mode == "raw":
            # The user's own sentences: added as said (store_new still skips duplicates).
            return [{"op": "add", "id": None, "text": fact} for fact in facts]
        if not facts:
            return []
        vectors, neighbours = await anyio.to_thread.run_sync(self._neighbours, job, facts)
        add_only = self._settings.extraction.decisions == "add_only"
        threshold = self._settings.extraction.duplicate_threshold
        operations: list[dict[str, Any]] = []
        for row, fact in enumerate(facts):
            near = [(m, s) for m, s in neighbours[row] if m.id not in touched]
            if any(s >= threshold or normalise(m.text) == normalise(fact) for m, s in near):
                self.guard_events["rejected_duplicate"] += 1
                continue
            earlier = [(facts[r], float(vectors[row] @ vectors[r])) for r in range(row)]
            if any(s >= threshold or (same_topic(f, fact, s) and says_nothing_new(f, fact))
                   for f, s in earlier):
                self.guard_events["rejected_duplicate"] += 1  # this job said it already
                continue
            if any(says_nothing_new(m.text, fact) for m, s in near if same_topic(m.text, fact, s)):
                self.guard_events["rejected_duplicate"] += 1  # a restatement: no call needed
                continue
            topic = next((m for m, s in near if same_topic(m.text, fact, s)), None)
            if topic is None or add_only:
                operations.append({"op": "add", "id": None, "text": fact})
                continue
            relation = await self._ask_relation(job, topic.text, fact, user_words)
            similarity = next(s for m, s in near if m is topic)
            operation = self._operation_for(relation, topic, fact, user_words, similarity)
            if operation is not None:
                touched.add(operation["id"] or "")
                operations.append(operation)
        return operations

    def _operation_for(
        self, relation: Relation, old: Memory, fact: str, user_words: str, similarity: float
    ) -> dict[str, Any] | None:
        events = self.guard_events
        if relation == "same":
            if believable_same(old.text, fact, similarity):
                events["rejected_duplicate"] += 1
                return None
            events["same_to_add_says_more"] += 1  # "same", but it names things OLD does not
        if relation == "replaces":
            if _ADDITIVE.search(user_words):
                events["supersede_to_add_additive"] += 1  # "I also use Redis"
                return {"op": "add", "id": None, "text": fact}
            if restates(old.text, user_words):
                events["supersede_to_add_restated"] += 1  # "As I said, I'm a nurse, …"
                return {"op": "add", "id": None, "text": fact}
            return {"op": "supersede", "id": old.id, "text": fact}
        if relation == "more_detail":
            if keeps_information(old.text, fact):
                return {"op": "update", "id": old.id, "text": fact}
            events["update_to_add_would_lose"] += 1
        return {"op": "add", "id": None, "text": fact}

    def _neighbours(
        self, job: ExtractionJob, facts: list[str]
    ) -> tuple[np.ndarray, list[list[tuple[Memory, float]]]]:
        user_id = job.identity.user_id
        assert user_id is not None
        vectors = self._embedder.embed(facts)
        k = self._settings.extraction.related_memories
        return vectors, [
            [(s.memory, s.score) for s in self._store.search(
                user_id, vectors[row], k, tenant=job.identity.tenant)]
            if k else []
            for row in range(len(facts))
        ]

    # -- model calls -------------------------------------------------------------------
    async def _ask_facts(self, job: ExtractionJob, statements: list[str]) -> list[str]:
        return await self._ask(
            job, FACTS_SYSTEM, facts_prompt(statements), "memory_facts",
            FACTS_SCHEMA, parse_facts,
        )

    async def _ask_relation(
        self, job: ExtractionJob, old: str, new: str, user_words: str
    ) -> Relation:
        try:
            return await self._ask(
                job, RELATION_SYSTEM, relation_prompt(old, new, user_words), "fact_relation",
                RELATION_SCHEMA, parse_relation,
            )
        except ExtractionFailed:
            # No usable answer: keep both facts (nothing lost; at worst both stay current).
            self.guard_events["relation_unusable"] += 1
            return "separate"

    async def _ask(
        self, job: ExtractionJob, system: str, prompt: str, name: str,
        schema: dict[str, object], parse: Callable[[str], Any],
    ) -> Any:
        """json_schema (strict) first; json_object with a schema reminder when the provider
        rejects it or the answer does not parse (each answer gets a repair pass); at most
        ``llm_attempts`` calls, with backoff between them."""
        settings = self._settings.extraction
        route = self._route(job)
        api_key = (
            route.api_key.get_secret_value() if route.api_key else job.api_key
        ) or self._upstream_key(route)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system}, {"role": "user", "content": prompt},
        ]
        schema_format = {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        }
        use_schema = True
        last_error: Exception | None = None
        for attempt in range(settings.llm_attempts):
            if attempt:
                await anyio.sleep(settings.retry_backoff_seconds * 2 ** (attempt - 1))
            asked = messages
            if not use_schema:
                asked = [*messages, {"role": "system", "content": schema_reminder(schema)}]
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
                return parse(content)
            except ExtractionFailed as exc:
                last_error = exc
                use_schema = False
        self.usage["failed_calls"] += 1
        raise ExtractionFailed(str(last_error or "no usable answer"))

    def _upstream_key(self, route: ModelRoute) -> str | None:
        own = self._settings.upstream.api_key
        if own is not None and route.api_base == self._settings.upstream_base:
            return own.get_secret_value()
        return None

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
        if job.model.startswith(ANTHROPIC_JOB_PREFIX):
            # An exchange on /v1/messages: its model, on the Anthropic upstream it came through
            # (the caller's key is an Anthropic key; it never goes to the OpenAI upstream).
            return ModelRoute(model=job.model, api_key=self._settings.anthropic.api_key,
                              api_base=self._settings.anthropic_base)
        return ModelRoute(model=f"openai/{job.model}", api_base=upstream)

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
