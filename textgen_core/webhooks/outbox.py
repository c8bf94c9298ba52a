"""The outbox: a completion event is recorded in the same Lua call that ends its job or batch.

A process can die between ending a job and queueing ``job.completed``; without a record, that
event would be lost. So the terminal scripts add ``event|object_id`` to ``Keys.webhook_outbox``
(``outbox_lua.OUTBOX_LUA``, only when the object has a webhook that wants the event). The process that ended
the object flushes the entry at once; a sweeper in the webhook worker queues what stays behind
longer than a grace period. Every send of one event carries the same ``webhook_id`` (derived from
event and object), so a re-send after a crash between queueing and removal is deduplicated by
receivers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.batch_store import AsyncBatchStore, BatchLedger
from textgen_core.batches import BatchRecord
from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.responses import is_response, webhook_event, webhook_payload
from textgen_core.scripts import Scripts, define
from textgen_core.store import AsyncJobStore, JobStore
from textgen_core.webhooks.events import AsyncWebhookEmitter, WebhookEmitter, batch_payload, job_payload

log = logging.getLogger(__name__)

# An entry's score is when it was recorded, or, once someone took it, a time in the future: it is
# leased to the taker until then. Whoever takes an entry queues its event and removes it; if the
# taker dies, the entry is due again a grace period after its lease ends.

# KEYS: outbox. ARGV: entry, now, lease end. Takes a fresh entry (not leased): the process that
# ended the object, or one of the concurrent items of a batch, takes it once.
TAKE = define("outbox.take", """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
""")

# KEYS: outbox. ARGV: due before, limit, lease end. Takes the entries left behind (the sweeper).
LEASE = define("outbox.lease", """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], m) end
return due
""")


class Subject(NamedTuple):
    """What an event needs from its object: whom it belongs to, where it goes, what it says."""

    owner: str
    url: str | None
    events_filter: list[str]
    payload: dict[str, Any]
    event: str | None = None  # the event sent in place of the recorded one (a response's end)


def webhook_id_for(event: str, object_id: str) -> str:
    """The one ``webhook-id`` of a completion event, the same on every send of it."""
    return "msg_" + hashlib.sha256(f"{event}:{object_id}".encode()).hexdigest()[:32]


def member(event: str, object_id: str) -> str:
    return f"{event}|{object_id}"


def job_subject(job: JobRecord | None) -> Subject | None:
    if job is None:
        return None
    if is_response(job.id):  # a response is a job, but its end speaks the Responses API's events
        event = webhook_event(job)
        return Subject(job.owner, job.webhook, list(job.webhook_events_filter), webhook_payload(job, event), event)
    return Subject(job.owner, job.webhook, list(job.webhook_events_filter), job_payload(job))


def batch_subject(batch: BatchRecord | None) -> Subject | None:
    if batch is None:
        return None
    return Subject(batch.owner, batch.webhook, list(batch.webhook_events_filter), batch_payload(batch))


class Outbox:
    """Worker side (synchronous): flush one entry, or sweep the ones left behind."""

    def __init__(self, client: redis.Redis, keys: Keys, emitter: WebhookEmitter, jobs: JobStore,
                 batches: BatchLedger, *, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.emitter = emitter
        self.jobs = jobs
        self.batches = batches
        self.lease_seconds = lease_seconds
        self._scripts = Scripts(client, TAKE, LEASE)

    def _subject(self, event: str, object_id: str) -> Subject | None:
        if event == "job.completed":
            return job_subject(self.jobs.get(object_id))
        return batch_subject(self.batches.get(object_id))

    def flush(self, event: str, object_id: str) -> str | None:
        """Queue the event if the outbox holds it and no one else took it; returns its webhook id.

        An error while queueing leaves the entry for the sweeper."""
        now = time.time()
        if not self._scripts[TAKE](keys=[self.keys.webhook_outbox],
                          args=[member(event, object_id), now, now + self.lease_seconds]):
            return None
        return self._queue(event, object_id)

    def _queue(self, event: str, object_id: str) -> str | None:
        """Queue a taken entry's event, then remove the entry."""
        subject = self._subject(event, object_id)
        sent = None
        if subject is not None:  # else the object expired: nothing left to tell
            name = subject.event or event
            sent = self.emitter.emit(owner=subject.owner, url=subject.url, event=name, object_id=object_id,
                                     payload=subject.payload, events_filter=subject.events_filter,
                                     webhook_id=webhook_id_for(name, object_id))
        self.r.zrem(self.keys.webhook_outbox, member(event, object_id))
        return sent

    def sweep(self, grace_seconds: float, limit: int = 100) -> int:
        """Queue entries older than ``grace_seconds`` (their process died or failed); returns how many."""
        now = time.time()
        due: list[str] = self._scripts[LEASE](keys=[self.keys.webhook_outbox],
                                     args=[now - grace_seconds, limit, now + self.lease_seconds])
        sent = 0
        for entry in due:
            event, _, object_id = entry.partition("|")
            try:
                sent += self._queue(event, object_id) is not None
            except Exception:  # stays leased; due again a grace period after the lease ends
                log.exception("outbox: could not queue %s", entry)
        return sent


class AsyncOutbox:
    """API side: flush the entries of jobs and batches that the API itself ended (cancels)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, emitter: AsyncWebhookEmitter, jobs: AsyncJobStore,
                 batches: AsyncBatchStore, *, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.emitter = emitter
        self.jobs = jobs
        self.batches = batches
        self.lease_seconds = lease_seconds
        self._scripts = Scripts(client, TAKE)

    async def _subject(self, event: str, object_id: str) -> Subject | None:
        is_job = event == "job.completed"
        owner = await self.r.hget(self.keys.job(object_id) if is_job else self.keys.batch(object_id), "owner")
        if not owner:
            return None
        if is_job:
            return job_subject(await self.jobs.get(object_id, str(owner)))
        return batch_subject(await self.batches.get(object_id, str(owner)))

    async def flush(self, event: str, object_id: str) -> str | None:
        """Same contract as :meth:`Outbox.flush`."""
        now = time.time()
        entry = member(event, object_id)
        if not await self._scripts[TAKE](keys=[self.keys.webhook_outbox], args=[entry, now, now + self.lease_seconds]):
            return None
        subject = await self._subject(event, object_id)
        sent = None
        if subject is not None:
            name = subject.event or event
            sent = await self.emitter.emit(owner=subject.owner, url=subject.url, event=name, object_id=object_id,
                                           payload=subject.payload, events_filter=subject.events_filter,
                                           webhook_id=webhook_id_for(name, object_id))
        await self.r.zrem(self.keys.webhook_outbox, entry)
        return sent
