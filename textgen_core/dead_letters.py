"""Dead letters: jobs that ended ``failed`` (their attempts used up by a job that stopped its worker each
time, or a generation that failed on them), and the retry that gives one a new attempt.

Failed jobs stay listed with the caller's others (``GET /v1/jobs?status=failed``, cursor paging, per
key: ``textgen_core/job_index.py``). ``POST /v1/jobs/{id}/retry`` runs :data:`RETRY`, which moves a
failed job back to ``queued`` under the same id in one step (so two retries at once make one attempt);
the API then sends its message again. The job's outcome fields, attempt counter and token stream start
over; its input, owner, webhook and conversation stay. A batch item is not retried on its own: its
batch has counted it already.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts, define

# KEYS: job, tokens stream, leases set, the owner's unfinished-jobs counter. ARGV: owner, now, lease
# seconds, ttl. Returns "retried", "missing" (no such job, or another key's), "batch_item", or the
# status of a job that is not failed. The job is armed with a lease that no task holds: if the message
# the caller sends next is lost, the lease lapses and a worker's reaper sends it again (leases.py).
RETRY = define("job.retry", """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'missing' end
if st ~= 'failed' then return st end
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then return 'batch_item' end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0', 'worker', '', 'attempt_token', '', 'error', '',
  'finish_reason', '', 'output', '', 'usage', '', 'batch_size', '', 'started_at', '', 'finished_at', '',
  'cancel_requested', '0', 'deadline_at', '', 'pending_key', KEYS[4], 'lease', '')
redis.call('HINCRBY', KEYS[1], 'retries', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), redis.call('HGET', KEYS[1], 'id'))
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 'retried'
""")


class AsyncDeadLetters:
    """API side: retry a failed job."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, lease_seconds: float, ttl: int):
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.ttl = ttl
        self._scripts = Scripts(client, RETRY)

    async def retry(self, job_id: str, owner: str) -> str:
        """Move the owner's failed job back to ``queued`` (see :data:`RETRY` for the outcomes)."""
        return str(await self._scripts[RETRY](
            keys=[self.keys.job(job_id), self.keys.tokens(job_id), self.keys.leases, self.keys.pending(owner)],
            args=[owner, time.time(), self.lease_seconds, self.ttl]))
