"""The extraction job queue over HTTP, for the admin: ``GET /v1/memories/jobs`` (counts by
state and the newest jobs, dead letters with their last error), ``POST
/v1/memories/jobs/retry`` and ``POST /v1/memories/jobs/purge``.

The same operations as ``memproxy jobs list|retry|purge`` (proxy/extraction/job_admin.py) on
the running server's queue. Admin only: a job row belongs to no one tenant's view (its error
may quote any user's exchange), so a proxy key is refused (403); a user's own pending jobs are
``GET /v1/users/{user_id}/jobs``. With extraction off there is no queue: the listing is
empty and retry / purge change nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.memories import MemoriesAPI, bool_param, int_param, optional_id
from proxy.errors import InvalidRequest, PermissionDenied
from proxy.extraction.jobs import STATES, JobStats

LISTED_STATES = (*STATES, "failed")  # failed: queued again after an error, backing off
PURGEABLE = ("done", "dead")


def _admin_only(api: MemoriesAPI, request: Request) -> None:
    if not api.scope(request).is_admin:
        raise PermissionDenied("the job queue is for the admin key only", code="admin_only")


async def list_jobs(api: MemoriesAPI, request: Request) -> Response:
    _admin_only(api, request)
    query = request.query_params
    states = [s for s in query.getlist("state") if s]
    unknown = [s for s in states if s not in LISTED_STATES]
    if unknown:
        raise InvalidRequest(f"'state' must be one of {', '.join(LISTED_STATES)}",
                             param="state")
    user_id = optional_id(query, "user_id", api.s.settings.identity.max_id_length)
    limit = int_param(request, "limit", 50, 1, 1000)
    queue = api.s.jobs
    stats, rows = JobStats(), []
    if queue is not None:
        stats = await api.run(queue.stats)
        rows = await api.run(queue.list, states, user_id, limit)
    return JSONResponse({
        "object": "list", "extraction": api.s.settings.extraction.mode,
        "stats": dataclasses.asdict(stats),
        "data": [row.to_json() for row in rows],
    })


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > 1000 or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in value
    ):
        raise InvalidRequest("'ids' must be a non-empty array of at most 1000 job ids",
                             param="ids")
    return value


async def retry_jobs(api: MemoriesAPI, request: Request) -> Response:
    _admin_only(api, request)
    body = await api.body(request)
    unknown = set(body) - {"ids", "dead"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    all_dead = bool_param(body.get("dead", False), "dead")
    if all_dead == ("ids" in body):
        raise InvalidRequest("give either 'ids' or \"dead\": true")
    ids = [] if all_dead else _ids(body["ids"])
    queue = api.s.jobs
    count = await api.run(queue.retry, ids, all_dead=all_dead) if queue is not None else 0
    return JSONResponse({"object": "jobs.retried", "retried": count})


async def purge_jobs(api: MemoriesAPI, request: Request) -> Response:
    _admin_only(api, request)
    body = await api.body(request)
    unknown = set(body) - {"states", "older_than_seconds"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    states = body.get("states", ["done"])
    if not isinstance(states, list) or not states or not all(s in PURGEABLE for s in states):
        raise InvalidRequest("'states' must be a non-empty array of done and/or dead",
                             param="states")
    age = body.get("older_than_seconds", 0)
    if isinstance(age, bool) or not isinstance(age, int | float) or not 0 <= age <= 10**10:
        raise InvalidRequest("'older_than_seconds' must be a number from 0", param=
                             "older_than_seconds")
    queue = api.s.jobs
    count = await api.run(queue.purge, states, float(age)) if queue is not None else 0
    return JSONResponse({"object": "jobs.purged", "purged": count})
