"""Readiness (/readyz): can the memory layer serve right now?

Chats are forwarded either way (fail open); readiness tells an operator or a load balancer
that memories are currently not being read or written.
"""

from __future__ import annotations

import logging

import anyio

from proxy.gateway.flow import GatewayServices
from proxy.memory.retrieval import Retriever

log = logging.getLogger("memproxy")

PROBE_USER = "memproxy-readiness-probe"
PROBE_TIMEOUT_SECONDS = 1.0
WARM_UP_QUERY = "What did I tell you about my sister's trip to Lisbon in May?"


async def _answers(fn: object, *args: object) -> bool:
    try:
        with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)  # type: ignore[arg-type]
    except Exception:
        return False
    return True


async def readiness(services: GatewayServices) -> dict[str, bool]:
    """memory: the store opened and answers; jobs: the job database answers; worker: the
    extraction workers run. With extraction off, jobs and worker are not needed."""
    store = services.store
    memory = (
        services.memory_error is None
        and store is not None
        and await _answers(store.count_user, PROBE_USER)
    )
    shared = {}
    replicas = getattr(store, "replicas", None)
    if services.settings.state.database_url is not None:
        # Replicas on Postgres: the shared state (keys, versions, forgets) answers.
        shared["database"] = replicas is not None and await _answers(replicas.ping)
    if services.settings.extraction.mode == "off":
        return {"memory": memory, "jobs": True, "worker": True, **shared}
    jobs = services.jobs
    return {
        "memory": memory,
        "jobs": jobs is not None and await _answers(jobs.queue.ping),
        "worker": jobs is not None and jobs.running,
        **shared,
    }


def warm_up(retriever: Retriever) -> None:
    """One retrieval before the server says it is ready (blocking; run it in a thread): the
    model's first run (graph optimisation, allocations, ~100 ms) and the store's first read
    are paid here, not by the first chat, which would come back degraded."""
    try:
        retriever.retrieve(PROBE_USER, WARM_UP_QUERY)
    except Exception as exc:  # the chat path fails open on its own; say so now
        log.warning("memory warm-up failed (%s: %s)", type(exc).__name__, exc)
