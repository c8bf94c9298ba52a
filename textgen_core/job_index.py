"""Each caller's jobs by creation time, for ``GET /v1/jobs``: a sorted set per owner.

The set holds ids only; the records stay in their hashes. It carries the job TTL, refreshed on
every add, and each add also drops members older than that TTL, so the set neither outlives nor
outgrows the jobs it points to. A member whose record is gone (expired, or taken back when the
enqueue failed) is skipped when listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis.asyncio as aioredis

from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.store import decode_job

# Index entries one page reads at most: a filter that matches few jobs costs a bounded read, and
# the caller pages on from ``cursor``.
SCAN_MAX = 1000


def index_jobs(pipe: Any, keys: Keys, jobs: Iterable[JobRecord], ttl: int) -> None:
    """Queue the commands that index ``jobs`` on ``pipe`` (a pipeline the caller executes)."""
    by_owner: dict[str, dict[str, float]] = {}
    for job in jobs:
        by_owner.setdefault(job.owner, {})[job.id] = job.timings.created_at
    for owner, members in by_owner.items():
        key = keys.owner_jobs(owner)
        pipe.zadd(key, members)
        pipe.zremrangebyscore(key, "-inf", time.time() - ttl)
        pipe.expire(key, ttl)


class CursorNotFound(LookupError):
    """``after`` names no job in the caller's list."""


class AsyncJobIndex:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, ttl: int):
        self.r = client
        self.keys = keys
        self.ttl = ttl

    async def add(self, jobs: list[JobRecord]) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            index_jobs(pipe, self.keys, jobs, self.ttl)
            await pipe.execute()

    async def page(self, owner: str, limit: int, after: str | None,
                   wanted: Callable[[JobRecord], bool]) -> tuple[list[JobRecord], bool, str | None]:
        """Up to ``limit`` of the owner's jobs that ``wanted`` accepts, newest first, after the job
        ``after``. Returns them, whether more may follow, and the cursor to continue from (the last
        job returned, or the last one looked at when the scan limit ended the page early)."""
        key = self.keys.owner_jobs(owner)
        start = 0
        if after:
            rank = await self.r.zrevrank(key, after)
            if rank is None:
                raise CursorNotFound(after)
            start = int(cast(int, rank)) + 1
        out: list[JobRecord] = []
        scanned, last_seen = 0, cast(str | None, None)
        while len(out) <= limit and scanned < SCAN_MAX:
            ids = cast(list[str], await self.r.zrevrange(key, start, start + min(limit + 1, SCAN_MAX - scanned) - 1))
            if not ids:
                return out, False, out[-1].id if out else None
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                    pipe.lrange(self.keys.webhook_deliveries(job_id), 0, -1)
                replies = await pipe.execute()
            for job_id, raw, deliveries in zip(ids, replies[::2], replies[1::2], strict=True):
                scanned, last_seen = scanned + 1, job_id
                if not raw or raw.get("owner") != owner:
                    continue
                job = decode_job(raw, deliveries)
                if wanted(job):
                    out.append(job)
                    if len(out) > limit:
                        return out[:limit], True, out[limit - 1].id
        # The scan limit ended the page: more may follow from the last job looked at.
        more = await self.r.zcard(key) > start
        return out, more, (last_seen if more else (out[-1].id if out else None))
