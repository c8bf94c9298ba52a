"""Batches in Redis: the API's :class:`AsyncBatchStore` (create, read, list, cancel, read items)
and the workers' :class:`BatchLedger` (the reads the batch tasks need). Which worker holds which
item is a job lease, as for any job (``textgen_core/leases.py``).

Items are job records written in chunks with pipelines, so a 50,000-item batch never needs
one giant command or all its records in memory at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aioredis

from textgen_core.batches import BatchRecord, BatchStatus
from textgen_core.deadlines import track
from textgen_core.job_index import index_jobs
from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.pending import RESERVE, UNRESERVE, WITHDRAW
from textgen_core.scripts import Scripts, define
from textgen_core.store import CANCEL, encode_job

# Fields of an item that results need (everything but the input and history).
ITEM_FIELDS = ("id", "custom_id", "status", "output", "finish_reason", "usage", "error", "model", "created_at",
               "finished_at", "cached")

# KEYS: batch, active batches. ARGV: batch id. Every item is written and enqueued: validating ->
# in_progress (a cancel or the last item may have moved it on already: only validating moves);
# an ended batch leaves the active set. Returns the status afterwards.
START = define("batch.start", """
if redis.call('HGET', KEYS[1], 'status') == 'validating' then redis.call('HSET', KEYS[1], 'status', 'in_progress') end
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'completed' or s == 'canceled' or s == 'failed' or s == 'expired' then redis.call('SREM', KEYS[2], ARGV[1]) end
return s
""")

# KEYS: batch. ARGV: now. A validating or in-progress batch becomes cancelling; returns its status before.
REQUEST_CANCEL = define("batch.request_cancel", """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'validating' or s == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancel_requested', '1', 'cancelling_at', ARGV[1])
end
return s
""")


class AsyncBatchStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, ttl: int, stream_ttl: int):
        self.r = client
        self.keys = keys
        self.ttl = ttl
        self.stream_ttl = stream_ttl
        self._scripts = Scripts(client, CANCEL, START, REQUEST_CANCEL, RESERVE, UNRESERVE, WITHDRAW)

    async def create(self, batch: BatchRecord) -> None:
        key = self.keys.batch(batch.id)
        owned = self.keys.owner_batches(batch.owner)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=batch.encode())
            pipe.expire(key, self.ttl)
            pipe.sadd(self.keys.active_batches, batch.id)
            pipe.zadd(owned, {batch.id: batch.created_at})
            pipe.expire(owned, self.ttl)
            await pipe.execute()

    async def reserve(self, owner: str, places: int, cap: int) -> tuple[bool, int]:
        """Count ``places`` items among the owner's unfinished batch items unless that would pass ``cap``
        (0: no cap). Returns whether they were counted and the owner's unfinished batch items."""
        taken, count = await self._scripts[RESERVE](keys=[self.keys.pending_batch_items(owner)],
                                                    args=[cap, places, self.ttl])
        return bool(taken), int(count)

    async def add_items(self, batch_id: str, jobs: list[JobRecord]) -> None:
        """Write one chunk of item records (each holding one of the places :meth:`reserve` took) and
        append their ids to the batch's ordered list."""
        ids_key = self.keys.batch_jobs(batch_id)
        async with self.r.pipeline(transaction=False) as pipe:
            for job in jobs:
                record = encode_job(job)
                record["pending_key"] = self.keys.pending_batch_items(job.owner)
                pipe.hset(self.keys.job(job.id), mapping=record)  # type: ignore[arg-type]
                pipe.expire(self.keys.job(job.id), self.ttl)
            pipe.rpush(ids_key, *[job.id for job in jobs])
            pipe.expire(ids_key, self.ttl)
            index_jobs(pipe, self.keys, jobs, self.ttl)  # GET /v1/jobs lists batch items too
            track(pipe, self.keys, {j.id: j.deadline_at for j in jobs if j.deadline_at is not None}, self.ttl)
            await pipe.execute()

    async def start(self, batch_id: str) -> None:
        """Every item is written and enqueued: validating -> in_progress (unless already ended)."""
        await self._scripts[START](keys=[self.keys.batch(batch_id), self.keys.active_batches], args=[batch_id])

    async def unreserve(self, owner: str, places: int) -> None:
        """Give back ``places`` that :meth:`reserve` took for items never written."""
        await self._scripts[UNRESERVE](keys=[self.keys.pending_batch_items(owner)], args=[places])

    async def delete(self, batch_id: str, owner: str, unwritten: int = 0) -> None:
        """Remove a batch that could not be accepted, with the items written so far; their places
        among the owner's unfinished jobs go back, and so do the ``unwritten`` ones reserved."""
        ids_key = self.keys.batch_jobs(batch_id)
        while chunk := await self.r.lpop(ids_key, 1000):
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    job_key, tokens_key = self.keys.job(str(job_id)), self.keys.tokens(str(job_id))
                    await self._scripts[WITHDRAW](keys=[job_key, tokens_key], client=pipe)
                await pipe.execute()
        await self.r.delete(self.keys.batch(batch_id))
        await self.r.zrem(self.keys.owner_batches(owner), batch_id)
        await self.r.srem(self.keys.active_batches, batch_id)
        await self.unreserve(owner, unwritten)  # last: a retry after a failure half-way gives them back once

    async def get(self, batch_id: str, owner: str) -> BatchRecord | None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.batch(batch_id))
            pipe.lrange(self.keys.webhook_deliveries(batch_id), 0, -1)
            raw, deliveries = await pipe.execute()
        if not raw or raw.get("owner") != owner:
            return None
        return BatchRecord.decode(raw, deliveries)

    async def page(self, owner: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """The owner's batches, newest first, ``limit`` after the batch id ``after``."""
        owned = self.keys.owner_batches(owner)
        start = 0
        if after:
            rank = await self.r.zrevrank(owned, after)
            start = 0 if rank is None else rank + 1
        out: list[BatchRecord] = []
        while len(out) <= limit:
            ids = await self.r.zrevrange(owned, start, start + limit)
            if not ids:
                break
            start += len(ids)
            for batch_id in ids:
                batch = await self.get(batch_id, owner)
                if batch is None:
                    await self.r.zrem(owned, batch_id)  # expired: forget it
                    start -= 1
                elif len(out) <= limit:
                    out.append(batch)
        return out[:limit], len(out) > limit

    async def request_cancel(self, batch_id: str, owner: str, chunk: int) -> None:
        """Mark the batch cancelling, then cancel its items in chunks: queued ones never run,
        running ones stop at the next step. The last item to end settles the batch ``canceled``."""
        await self._scripts[REQUEST_CANCEL](keys=[self.keys.batch(batch_id)], args=[time.time()])
        start = 0
        while ids := await self.r.lrange(self.keys.batch_jobs(batch_id), start, start + chunk - 1):
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    await self._scripts[CANCEL](
                        keys=[self.keys.job(job_id), self.keys.tokens(job_id)],
                        args=[owner, time.time(), self.keys.events_channel, self.keys.cancel_channel,
                              self.stream_ttl, self.keys.prefix],
                        client=pipe,
                    )
                await pipe.execute()

    async def items(self, batch_id: str, chunk: int) -> AsyncIterator[dict[str, str]]:
        """Every item's result fields, in input order, ``chunk`` records per round trip."""
        start = 0
        while ids := await self.r.lrange(self.keys.batch_jobs(batch_id), start, start + chunk - 1):
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self.keys.job(job_id), ITEM_FIELDS)
                rows = await pipe.execute()
            for row in rows:
                yield dict(zip(ITEM_FIELDS, row, strict=True))


def item_json(value: str | None) -> object:
    return json.loads(value) if value else None


class BatchLedger:
    """Worker side: the batch reads of the dispatch and item tasks."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.r = client
        self.keys = keys

    def job_ids(self, batch_id: str, start: int, stop: int) -> list[str]:
        return list(self.r.lrange(self.keys.batch_jobs(batch_id), start, stop - 1))

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch with its webhook deliveries (for its webhook events)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.batch(batch_id))
        pipe.lrange(self.keys.webhook_deliveries(batch_id), 0, -1)
        raw, deliveries = pipe.execute()
        return BatchRecord.decode(raw, deliveries) if raw else None

    def status(self, batch_id: str) -> BatchStatus | None:
        value = self.r.hget(self.keys.batch(batch_id), "status")
        return BatchStatus(value) if value else None
