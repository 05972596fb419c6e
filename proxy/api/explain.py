"""Why memories are injected: ``POST /v1/memories/explain`` and ``GET /v1/memories/injections``.

Explain takes a message as if the user sent it (``message``, or chat ``messages`` as a chat
request has them) and answers exactly what the chat path would inject: the rendered block,
every candidate's dense (cosine), keyword (BM25) and rank (fused) scores, what was gated out
or left out and why, token counts against ``retrieval.max_tokens``. It runs the chat path's
own retriever (proxy/memory/retrieval.py ``Retriever.explain``), so its ``score`` and
``rank_score`` are the ones ``POST /v1/memories/search`` reports for the same query. Nothing
is recorded and nothing is sent upstream.

Injections lists the recent chat injections this replica made (a bounded in-memory ring:
ids, scores, token counts; the query text only with ``retrieval.recent_injections_text``),
newest first, within the caller's scope.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.memories import MemoriesAPI, int_param, memory_text, optional_id
from proxy.errors import InvalidRequest
from proxy.memory.injection import render_memory_block
from proxy.memory.retrieval import CandidateTrace, Explanation, build_query

MAX_CANDIDATES = 500


def _messages(body: dict[str, Any]) -> list[Any]:
    has_message, has_messages = "message" in body, "messages" in body
    if has_message == has_messages:
        raise InvalidRequest("give exactly one of 'message' and 'messages'")
    if has_message:
        return [{"role": "user", "content": memory_text(body["message"], "message")}]
    messages = body["messages"]
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) for m in messages
    ):
        raise InvalidRequest("'messages' must be a non-empty array of objects", param="messages")
    return messages


def _candidate(trace: CandidateTrace) -> dict[str, Any]:
    return {
        "memory": trace.memory.to_json(),
        # The names and rounding of POST /v1/memories/search: equal for the same query.
        "score": round(trace.dense, 6),
        "keyword_score": round(trace.keyword, 6),
        "rank_score": round(trace.fused, 6) if trace.fused is not None else None,
        "outcome": trace.outcome, "reason": trace.reason, "tokens": trace.tokens,
    }


def _explanation_json(
    api: MemoriesAPI, explained: Explanation, tenant: str, user_id: str, model: str | None
) -> dict[str, Any]:
    settings = api.s.settings.retrieval
    block = render_memory_block(explained.chosen, api.s.retriever.clock()) \
        if explained.chosen else None
    tokens = api.s.retriever.tokens
    return {
        "object": "memory.explanation", "tenant": tenant, "user_id": user_id,
        "model": model, "query": explained.query,
        "injected": [scored.memory.id for scored in explained.chosen],
        "block": block,
        "block_tokens": tokens.count(block, model) if block is not None else 0,
        "budget": {"max_tokens": explained.max_tokens, "used_tokens": explained.used_tokens,
                   "counted_with": "tokenizer" if explained.exact_tokens else "estimate"},
        "memories": explained.memories, "gating": explained.gating,
        # The days the question asks about ("last week", read in retrieval.timezone); with
        # dates_first the question has nothing else to go on and those days' memories lead.
        "time_asked": {"spans": [span.to_json() for span in explained.time_asked.spans],
                       "dates_first": explained.time_asked.only_time},
        "complete": explained.complete,
        "settings": {
            "top_k": explained.top_k, "min_score": settings.min_score,
            "core_when_at_most": settings.core_when_at_most, "fusion": settings.fusion,
            "dense_weight": settings.dense_weight, "keyword_weight": settings.keyword_weight,
            "mmr_lambda": settings.mmr_lambda, "neighbour_weight": settings.neighbour_weight,
            "date_weight": settings.date_weight,
        },
        "candidates": [_candidate(trace) for trace in explained.candidates],
    }


async def explain(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    body = await api.body(request)
    tenant, user_id = api.owner(scope, body)
    messages = _messages(body)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    limit = body.get("max_candidates", 50)
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CANDIDATES:
        raise InvalidRequest(f"'max_candidates' must be an integer from 1 to {MAX_CANDIDATES}",
                             param="max_candidates")
    query = build_query(messages, api.s.settings.retrieval.short_query_chars)
    if not query.strip():
        raise InvalidRequest("the messages hold no user message with text", param="messages")
    explained: Explanation = await api.run(
        api.s.retriever.explain, user_id, query, tenant=tenant, model=model,
        max_candidates=limit,
    )
    return JSONResponse(_explanation_json(api, explained, tenant, user_id, model))


async def injections(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    query = request.query_params
    max_id = api.s.settings.identity.max_id_length
    asked_tenant = optional_id(query, "tenant", max_id)
    tenant = scope.tenant_for(asked_tenant) if asked_tenant or not scope.is_admin else None
    user_id = scope.user_for(optional_id(query, "user_id", max_id))
    recent = api.s.retriever.recent
    records = recent.list(scope.allows, tenant=tenant, user_id=user_id,
                          limit=int_param(request, "limit", 50, 1, 1000))
    return JSONResponse({
        "object": "list", "data": [r.to_json() for r in records],
        "size": recent.size, "keeps_text": recent.keep_text,
    })
