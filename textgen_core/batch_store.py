"""Batches in Redis: one core (:class:`BatchStoreCore`: the scripts' KEYS and ARGV, reply parsing,
no I/O) and two thin shells with the same methods, :class:`BatchStore` over a synchronous client
(the workers' batch tasks) and :class:`AsyncBatchStore` over an asyncio one (the API: create, read,
list, cancel, read items). Which worker holds which item is a job lease, as for any job
(``textgen_core/leases.py``).

Items are job records written in chunks with pipelines, so a 50,000-item batch never needs
one giant command or all its records in memory at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from textgen_core.batches import BatchRecord, BatchStatus
from textgen_core.deadlines import track
from textgen_core.job_index import index_jobs
from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts import batches as batch_scripts
from textgen_core.scripts import jobs as job_scripts
from textgen_core.scripts import pending as pending_scripts
from textgen_core.store import Call, JobStoreCore, encode_job

# Fields of an item that results need (everything but the input and history).
ITEM_FIELDS = ("id", "custom_id", "status", "output", "finish_reason", "usage", "error", "model", "created_at",
               "finished_at", "cached")


class BatchStoreCore:
    """What both shells share: the scripts' arguments, the pipelined writes, the meaning of replies."""

    SCRIPTS = (job_scripts.CANCEL, batch_scripts.START, batch_scripts.REQUEST_CANCEL, pending_scripts.RESERVE,
               pending_scripts.UNRESERVE, pending_scripts.WITHDRAW)

    def __init__(self, keys: Keys, *, ttl: int, stream_ttl: int):
        self.keys = keys
        self.ttl = ttl
        self.jobs = JobStoreCore(keys, job_ttl=ttl, stream_ttl=stream_ttl, stream_maxlen=10_000, lease_seconds=30.0)

    def queue_create(self, pipe: Any, batch: BatchRecord) -> None:
        key = self.keys.batch(batch.id)
        owned = self.keys.owner_batches(batch.owner)
        pipe.hset(key, mapping=batch.encode())
        pipe.expire(key, self.ttl)
        pipe.sadd(self.keys.active_batches, batch.id)
        pipe.zadd(owned, {batch.id: batch.created_at})
        pipe.expire(owned, self.ttl)

    def queue_items(self, pipe: Any, batch_id: str, jobs: list[JobRecord]) -> None:
        ids_key = self.keys.batch_jobs(batch_id)
        for job in jobs:
            record = encode_job(job)
            record["pending_key"] = self.keys.pending_batch_items(job.owner)
            pipe.hset(self.keys.job(job.id), mapping=record)
            pipe.expire(self.keys.job(job.id), self.ttl)
        pipe.rpush(ids_key, *[job.id for job in jobs])
        pipe.expire(ids_key, self.ttl)
        index_jobs(pipe, self.keys, jobs, self.ttl)  # GET /v1/jobs lists batch items too
        track(pipe, self.keys, {j.id: j.deadline_at for j in jobs if j.deadline_at is not None}, self.ttl)

    def reserve(self, owner: str, places: int, cap: int) -> Call:
        return Call(pending_scripts.RESERVE, [self.keys.pending_batch_items(owner)], [cap, places, self.ttl])

    @staticmethod
    def reserved(reply: Any) -> tuple[bool, int]:
        taken, count = reply
        return bool(taken), int(count)

    def unreserve(self, owner: str, places: int) -> Call:
        return Call(pending_scripts.UNRESERVE, [self.keys.pending_batch_items(owner)], [places])

    def start(self, batch_id: str) -> Call:
        return Call(batch_scripts.START, [self.keys.batch(batch_id), self.keys.active_batches], [batch_id])

    def request_cancel(self, batch_id: str) -> Call:
        return Call(batch_scripts.REQUEST_CANCEL, [self.keys.batch(batch_id)], [time.time()])

    def record_keys(self, batch_id: str) -> tuple[str, str]:
        return self.keys.batch(batch_id), self.keys.webhook_deliveries(batch_id)

    @staticmethod
    def record(raw: dict[str, str], deliveries: list[str], owner: str | None) -> BatchRecord | None:
        """The batch read, or None if missing or another owner's than ``owner`` (None: any)."""
        if not raw or (owner is not None and raw.get("owner") != owner):
            return None
        return BatchRecord.decode(raw, deliveries)

    @staticmethod
    def status(value: str | None) -> BatchStatus | None:
        return BatchStatus(value) if value else None

    @staticmethod
    def item_rows(rows: list[list[str | None]]) -> list[dict[str, str]]:
        return [dict(zip(ITEM_FIELDS, row, strict=True)) for row in rows]  # type: ignore[misc]


class AsyncBatchStore:
    """Asyncio shell (the API)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, ttl: int, stream_ttl: int):
        self.r = client
        self.keys = keys
        self.core = BatchStoreCore(keys, ttl=ttl, stream_ttl=stream_ttl)
        self._scripts = Scripts(client, *BatchStoreCore.SCRIPTS)

    async def _run(self, call: Call, client: Any = None) -> Any:
        return await self._scripts[call.script](keys=call.keys, args=call.args, client=client)

    async def create(self, batch: BatchRecord) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            self.core.queue_create(pipe, batch)
            await pipe.execute()

    async def reserve(self, owner: str, places: int, cap: int) -> tuple[bool, int]:
        """Count ``places`` items among the owner's unfinished batch items unless that would pass ``cap``
        (0: no cap). Returns whether they were counted and the owner's unfinished batch items."""
        return self.core.reserved(await self._run(self.core.reserve(owner, places, cap)))

    async def add_items(self, batch_id: str, jobs: list[JobRecord]) -> None:
        """Write one chunk of item records (each holding one of the places :meth:`reserve` took) and
        append their ids to the batch's ordered list."""
        async with self.r.pipeline(transaction=False) as pipe:
            self.core.queue_items(pipe, batch_id, jobs)
            await pipe.execute()

    async def start(self, batch_id: str) -> None:
        """Every item is written and enqueued: validating -> in_progress (unless already ended)."""
        await self._run(self.core.start(batch_id))

    async def unreserve(self, owner: str, places: int) -> None:
        """Give back ``places`` that :meth:`reserve` took for items never written."""
        await self._run(self.core.unreserve(owner, places))

    async def delete(self, batch_id: str, owner: str, unwritten: int = 0) -> None:
        """Remove a batch that could not be accepted, with the items written so far; their places
        among the owner's unfinished jobs go back, and so do the ``unwritten`` ones reserved."""
        while chunk := await self.r.lpop(self.keys.batch_jobs(batch_id), 1000):
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    await self._run(self.core.jobs.delete(str(job_id)), pipe)
                await pipe.execute()
        await self.r.delete(self.keys.batch(batch_id))
        await self.r.zrem(self.keys.owner_batches(owner), batch_id)
        await self.r.srem(self.keys.active_batches, batch_id)
        await self.unreserve(owner, unwritten)  # last: a retry after a failure half-way gives them back once

    async def get(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        """The batch with its webhook deliveries, if it exists and (with ``owner``) is ``owner``'s."""
        record_key, deliveries_key = self.core.record_keys(batch_id)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(record_key)
            pipe.lrange(deliveries_key, 0, -1)
            raw, deliveries = await pipe.execute()
        return self.core.record(raw, deliveries, owner)

    async def status(self, batch_id: str) -> BatchStatus | None:
        return self.core.status(await self.r.hget(self.keys.batch(batch_id), "status"))

    async def job_ids(self, batch_id: str, start: int, stop: int) -> list[str]:
        return list(await self.r.lrange(self.keys.batch_jobs(batch_id), start, stop - 1))

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
        await self._run(self.core.request_cancel(batch_id))
        start = 0
        while ids := await self.job_ids(batch_id, start, start + chunk):
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    await self._run(self.core.jobs.cancel(job_id, owner), pipe)
                await pipe.execute()

    async def items(self, batch_id: str, chunk: int) -> AsyncIterator[dict[str, str]]:
        """Every item's result fields, in input order, ``chunk`` records per round trip."""
        start = 0
        while ids := await self.job_ids(batch_id, start, start + chunk):
            start += len(ids)
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self.keys.job(job_id), ITEM_FIELDS)
                rows = await pipe.execute()
            for item in self.core.item_rows(rows):
                yield item


class BatchStore:
    """Synchronous shell (the workers' dispatch and item tasks): the methods of :class:`AsyncBatchStore`."""

    def __init__(self, client: redis.Redis, keys: Keys, *, ttl: int, stream_ttl: int):
        self.r = client
        self.keys = keys
        self.core = BatchStoreCore(keys, ttl=ttl, stream_ttl=stream_ttl)
        self._scripts = Scripts(client, *BatchStoreCore.SCRIPTS)

    def _run(self, call: Call, client: Any = None) -> Any:
        return self._scripts[call.script](keys=call.keys, args=call.args, client=client)

    def create(self, batch: BatchRecord) -> None:
        pipe = self.r.pipeline(transaction=True)
        self.core.queue_create(pipe, batch)
        pipe.execute()

    def reserve(self, owner: str, places: int, cap: int) -> tuple[bool, int]:
        """As :meth:`AsyncBatchStore.reserve`."""
        return self.core.reserved(self._run(self.core.reserve(owner, places, cap)))

    def add_items(self, batch_id: str, jobs: list[JobRecord]) -> None:
        """As :meth:`AsyncBatchStore.add_items`."""
        pipe = self.r.pipeline(transaction=False)
        self.core.queue_items(pipe, batch_id, jobs)
        pipe.execute()

    def start(self, batch_id: str) -> None:
        self._run(self.core.start(batch_id))

    def unreserve(self, owner: str, places: int) -> None:
        self._run(self.core.unreserve(owner, places))

    def delete(self, batch_id: str, owner: str, unwritten: int = 0) -> None:
        """As :meth:`AsyncBatchStore.delete`."""
        while chunk := self.r.lpop(self.keys.batch_jobs(batch_id), 1000):
            pipe = self.r.pipeline(transaction=False)
            for job_id in chunk:  # type: ignore[union-attr]
                self._run(self.core.jobs.delete(str(job_id)), pipe)
            pipe.execute()
        self.r.delete(self.keys.batch(batch_id))
        self.r.zrem(self.keys.owner_batches(owner), batch_id)
        self.r.srem(self.keys.active_batches, batch_id)
        self.unreserve(owner, unwritten)

    def get(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        """As :meth:`AsyncBatchStore.get`."""
        record_key, deliveries_key = self.core.record_keys(batch_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(record_key)
        pipe.lrange(deliveries_key, 0, -1)
        raw, deliveries = pipe.execute()
        return self.core.record(raw, deliveries, owner)

    def status(self, batch_id: str) -> BatchStatus | None:
        return self.core.status(self.r.hget(self.keys.batch(batch_id), "status"))  # type: ignore[arg-type]

    def job_ids(self, batch_id: str, start: int, stop: int) -> list[str]:
        return list(self.r.lrange(self.keys.batch_jobs(batch_id), start, stop - 1))  # type: ignore[arg-type]

    def page(self, owner: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """As :meth:`AsyncBatchStore.page`."""
        owned = self.keys.owner_batches(owner)
        start = 0
        if after:
            rank = self.r.zrevrank(owned, after)
            start = 0 if rank is None else int(rank) + 1  # type: ignore[arg-type]
        out: list[BatchRecord] = []
        while len(out) <= limit:
            ids: list[str] = self.r.zrevrange(owned, start, start + limit)  # type: ignore[assignment]
            if not ids:
                break
            start += len(ids)
            for batch_id in ids:
                batch = self.get(batch_id, owner)
                if batch is None:
                    self.r.zrem(owned, batch_id)
                    start -= 1
                elif len(out) <= limit:
                    out.append(batch)
        return out[:limit], len(out) > limit

    def request_cancel(self, batch_id: str, owner: str, chunk: int) -> None:
        """As :meth:`AsyncBatchStore.request_cancel`."""
        self._run(self.core.request_cancel(batch_id))
        start = 0
        while ids := self.job_ids(batch_id, start, start + chunk):
            start += len(ids)
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                self._run(self.core.jobs.cancel(job_id, owner), pipe)
            pipe.execute()

    def items(self, batch_id: str, chunk: int) -> Iterator[dict[str, str]]:
        """As :meth:`AsyncBatchStore.items`."""
        start = 0
        while ids := self.job_ids(batch_id, start, start + chunk):
            start += len(ids)
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), ITEM_FIELDS)
            yield from self.core.item_rows(pipe.execute())


def item_json(value: str | None) -> object:
    return json.loads(value) if value else None
