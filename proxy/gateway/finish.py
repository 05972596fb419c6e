"""After a successful response: the exchange becomes a durable extraction job."""

from __future__ import annotations

import re
import time
from typing import Any

from proxy.extraction.jobs import ExtractionJob, owner_of
from proxy.extraction.workers import ExtractionWorkers
from proxy.gateway.identity import Identity

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """Text fit for the store: a lone surrogate ("\\ud800" parses as JSON but is no valid
    Unicode) becomes U+FFFD; everything else (NUL, emoji, right-to-left) stays as it is."""
    return LONE_SURROGATE.sub("\ufffd", text)


class Finish:
    """Enqueue the exchange (durable, off the hot path) once the answer is complete.

    ``announce()`` runs when the response is known to succeed, before it is sent, so that
    ``GET /v1/users/{id}/jobs`` counts the exchange from the moment the client has its answer.
    ``conversation`` identifies the exchange (retries and regenerations are not stored twice).
    """

    def __init__(
        self, jobs: ExtractionWorkers | None, identity: Identity, api_key: str | None,
        user_texts: list[str], model: str, conversation: list[dict[str, Any]],
    ):
        self._jobs = jobs
        self._identity = identity
        self._api_key = api_key
        self._user_texts = user_texts
        self._model = model
        self._conversation = conversation
        self._token: int | None = None
        # When the user spoke: the job's time, so a forget while the upstream answers covers
        # this exchange too (proxy/memory/forget_fence.py).
        self._said_at = time.time()

    def announce(self) -> None:
        jobs = self._jobs
        if jobs is not None and self._identity.writes and self._user_texts and self._token is None:
            self._token = jobs.answered.add(owner_of(self._identity))

    async def __call__(self, assistant_text: str | None) -> None:
        jobs = self._jobs
        try:
            if jobs is None or assistant_text is None:
                return
            identity = self._identity
            # May wake this user's parked jobs (those for the same provider get this key).
            await jobs.saw_caller(identity, self._api_key, self._model)
            if not identity.writes or not self._user_texts:
                return
            job = ExtractionJob(
                identity=identity, user_texts=self._user_texts,
                assistant_text=valid_text(assistant_text), model=self._model,
                created_at=self._said_at,
            )
            await jobs.submit(job, self._api_key, self._conversation)
        finally:
            if jobs is not None and self._token is not None:
                jobs.answered.discard(self._token)
                self._token = None
