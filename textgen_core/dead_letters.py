"""Dead letters: jobs that ended ``failed`` (their attempts used up by a job that stopped its worker each
time, or a generation that failed on them), and the retry that gives one a new attempt.

Failed jobs stay listed with the caller's others (``GET /v1/jobs?status=failed``, cursor paging, per
key: ``textgen_core/job_index.py``). ``POST /v1/jobs/{id}/retry`` runs ``RETRY``
(``textgen_core/scripts/jobs.py``), which moves a failed job back to ``queued`` under the same id in
one step (so two retries at once make one attempt); the API then sends its message again. The job's
outcome fields, attempt counter and token stream start over; its input, owner, webhook and
conversation stay. A batch item is not retried on its own: its batch has counted it already.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts.jobs import RETRY


class AsyncDeadLetters:
    """API side: retry a failed job."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, lease_seconds: float, ttl: int, max_pending: int = 0):
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.ttl = ttl
        self.max_pending = max_pending  # the owner's unfinished-jobs cap, as a new job meets it (0: none)
        self._scripts = Scripts(client, RETRY)

    async def retry(self, job_id: str, owner: str) -> str:
        """Move the owner's failed job back to ``queued`` (see ``RETRY`` for the outcomes)."""
        return str(await self._scripts[RETRY](
            keys=[self.keys.job(job_id), self.keys.tokens(job_id), self.keys.leases, self.keys.pending(owner),
                  self.keys.owner_jobs(owner)],
            args=[owner, time.time(), self.lease_seconds, self.ttl, self.max_pending]))
