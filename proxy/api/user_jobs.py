"""``GET /v1/users/{user_id}/jobs``: a user's extraction jobs still to run, optionally awaited.

Memories appear a moment after an exchange: extraction runs once the response is sent (a
second or two in raw mode, an LLM call in llm mode). ``?wait=SECONDS`` (at most
``MAX_WAIT_SECONDS``) holds the answer until none of the user's jobs is pending, or the time
is up — a script or a walkthrough asks it before it reads the memories back.

``pending`` counts ``answered`` (exchanges answered whose job is not stored yet), ``queued``,
``failed`` (queued again after an error, backing off), ``running`` and ``waiting_key`` (a job
that outlived the process holding its caller's key waits for the user's next request).
"""

from __future__ import annotations

import math
import time

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.memories import MemoriesAPI
from proxy.errors import InvalidRequest
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.identity import Identity

MAX_WAIT_SECONDS = 60.0
POLL_SECONDS = 0.1


def wait_seconds(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_SECONDS:  # also rejects nan
        raise InvalidRequest(
            f"'wait' must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}", param="wait"
        )
    return value


async def user_jobs(api: MemoriesAPI, request: Request) -> Response:
    scope = api.scope(request)
    tenant, user_id = api.owner(
        scope, {**request.query_params, "user_id": request.path_params["user_id"]}
    )
    wait = wait_seconds(request.query_params.get("wait"))
    workers: ExtractionWorkers | None = request.app.state.services.jobs
    identity = Identity(user_id, tenant=tenant)
    deadline = time.monotonic() + wait
    counts: dict[str, int] = {}
    while workers is not None:
        counts = await workers.pending(identity)
        if not sum(counts.values()) or time.monotonic() >= deadline:
            break
        await anyio.sleep(POLL_SECONDS)
    pending = sum(counts.values())
    return JSONResponse({
        "object": "user.jobs", "tenant": tenant, "user_id": user_id,
        "pending": pending, "states": counts,
        "timed_out": wait > 0 and pending > 0,
        "extraction": api.s.settings.extraction.mode,
    })
