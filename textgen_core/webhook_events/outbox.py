"""The outbox: a completion event is recorded in the same Lua call that ends its job or batch.

A process can die between ending a job and queueing ``job.completed``; without a record, that
event would be lost. So the terminal scripts add ``event|object_id`` to ``Keys.webhook_outbox``
(``outbox_add`` in ``textgen_core/scripts/fragments.py``, only when the object has a webhook that wants
the event). The process that ended the object flushes the entries at once (``job_ended``: the job's
event, then its batch's, as ``OutboxCore.ended_events`` says, the one place a terminal transition
becomes its events); a sweeper in the webhook worker queues what stays behind longer than a grace
period. Every send of one event carries the same ``webhook_id`` (derived from
event and object), so a re-send after a crash between queueing and removal is deduplicated by
receivers. One core (:class:`OutboxCore`, no I/O) and two thin shells with the same methods,
:class:`Outbox` (workers) and :class:`AsyncOutbox` (the API, for what its cancels end).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.batch_store import AsyncBatchStore, BatchStore
from textgen_core.batches import BatchRecord
from textgen_core.jobs import JobRecord
from textgen_core.keys import Keys
from textgen_core.responses import is_response, webhook_event, webhook_payload
from textgen_core.scripts import Scripts
from textgen_core.scripts import outbox as outbox_scripts
from textgen_core.store import AsyncJobStore, Call, JobStore
from textgen_core.webhook_events.emitter import AsyncWebhookEmitter, WebhookEmitter, batch_payload, job_payload

log = logging.getLogger(__name__)

JOB_COMPLETED = "job.completed"
BATCH_COMPLETED = "batch.completed"


class Subject(NamedTuple):
    """What an event needs from its object: whom it belongs to, where it goes, what it says."""

    owner: str
    url: str | None
    events_filter: list[str]
    payload: dict[str, Any]
    event: str | None = None  # the event sent in place of the recorded one (a response's end)
    retries: int = 0  # a retried job ends again: its new end is a new event, with a webhook-id of its own


def webhook_id_for(event: str, object_id: str, retries: int = 0) -> str:
    """The one ``webhook-id`` of a completion event, the same on every send of it. A job's end after
    its ``retries``-th retry is another event than its first end (a receiver that drops a webhook-id
    it has seen must not drop it), so the retry count is part of the id."""
    material = f"{event}:{object_id}" + (f":{retries}" if retries else "")
    return "msg_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def member(event: str, object_id: str) -> str:
    return f"{event}|{object_id}"


def job_subject(job: JobRecord | None) -> Subject | None:
    if job is None:
        return None
    if is_response(job.id):  # a response is a job, but its end speaks the Responses API's events
        event = webhook_event(job)
        return Subject(job.owner, job.webhook, list(job.webhook_events_filter), webhook_payload(job, event), event,
                       job.retries)
    return Subject(job.owner, job.webhook, list(job.webhook_events_filter), job_payload(job), retries=job.retries)


def batch_subject(batch: BatchRecord | None) -> Subject | None:
    if batch is None:
        return None
    return Subject(batch.owner, batch.webhook, list(batch.webhook_events_filter), batch_payload(batch))


class JobEnded(NamedTuple):
    """What flushing a job's end queued: its event, and for a batch item its batch's (None: not queued,
    either not recorded, taken by another process, or not wanted)."""

    job_event: str | None
    batch_id: str | None  # the batch the job was an item of
    batch_event: str | None  # None for an item also while its batch has items left


class OutboxCore:
    """What both shells share: the scripts' arguments, and which events a terminal transition makes."""

    SCRIPTS = (outbox_scripts.TAKE, outbox_scripts.LEASE)

    def __init__(self, keys: Keys, lease_seconds: float):
        self.keys = keys
        self.lease_seconds = lease_seconds

    @staticmethod
    def ended_events(job_id: str, batch_id: str | None) -> list[tuple[str, str]]:
        """The one place a job's terminal transition becomes its webhook events, in order: the job's
        ``job.completed``, then, for a batch item, its batch's ``batch.completed`` (recorded by the script
        only if that item settled the batch). Flushing an event not recorded does nothing."""
        events = [(JOB_COMPLETED, job_id)]
        if batch_id:
            events.append((BATCH_COMPLETED, batch_id))
        return events

    def take(self, event: str, object_id: str) -> Call:
        now = time.time()
        return Call(outbox_scripts.TAKE, [self.keys.webhook_outbox],
                    [member(event, object_id), now, now + self.lease_seconds])

    def lease(self, grace_seconds: float, limit: int) -> Call:
        now = time.time()
        return Call(outbox_scripts.LEASE, [self.keys.webhook_outbox],
                    [now - grace_seconds, limit, now + self.lease_seconds])

    @staticmethod
    def entries(reply: list[str]) -> list[tuple[str, str]]:
        """The (event, object id) of leased entries."""
        return [(event, object_id) for event, _, object_id in (entry.partition("|") for entry in reply)]

    @staticmethod
    def subject(event: str, job: JobRecord | None = None, batch: BatchRecord | None = None) -> Subject | None:
        return job_subject(job) if event == JOB_COMPLETED else batch_subject(batch)

    @staticmethod
    def send_args(event: str, object_id: str, subject: Subject) -> dict[str, Any]:
        """The ``emit`` arguments of a taken entry's event."""
        name = subject.event or event
        return {"owner": subject.owner, "url": subject.url, "event": name, "object_id": object_id,
                "payload": subject.payload, "events_filter": subject.events_filter,
                "webhook_id": webhook_id_for(name, object_id, subject.retries)}


class Outbox:
    """Synchronous shell (workers): flush one entry or a job's end, or sweep the ones left behind."""

    def __init__(self, client: redis.Redis, keys: Keys, emitter: WebhookEmitter, jobs: JobStore,
                 batches: BatchStore, *, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.emitter = emitter
        self.jobs = jobs
        self.batches = batches
        self.core = OutboxCore(keys, lease_seconds)
        self._scripts = Scripts(client, *OutboxCore.SCRIPTS)

    def _run(self, call: Call) -> Any:
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def _subject(self, event: str, object_id: str) -> Subject | None:
        if event == JOB_COMPLETED:
            return self.core.subject(event, job=self.jobs.get(object_id))
        return self.core.subject(event, batch=self.batches.get(object_id))

    def flush(self, event: str, object_id: str) -> str | None:
        """Queue the event if the outbox holds it and no one else took it; returns its webhook id.

        An error while queueing leaves the entry for the sweeper."""
        if not self._run(self.core.take(event, object_id)):
            return None
        return self._queue(event, object_id)

    def job_ended(self, job_id: str) -> JobEnded:
        """Queue the events of a job's terminal transition (``OutboxCore.ended_events``)."""
        raw = self.r.hget(self.keys.job(job_id), "batch_id")
        batch_id = str(raw) if raw else None
        sent = [self.flush(event, object_id) for event, object_id in self.core.ended_events(job_id, batch_id)]
        return JobEnded(sent[0], batch_id, sent[1] if batch_id else None)

    def _queue(self, event: str, object_id: str) -> str | None:
        """Queue a taken entry's event, then remove the entry."""
        subject = self._subject(event, object_id)
        sent = None
        if subject is not None:  # else the object expired: nothing left to tell
            sent = self.emitter.emit(**self.core.send_args(event, object_id, subject))
        self.r.zrem(self.keys.webhook_outbox, member(event, object_id))
        return sent

    def sweep(self, grace_seconds: float, limit: int = 100) -> int:
        """Queue entries older than ``grace_seconds`` (their process died or failed); returns how many."""
        sent = 0
        for event, object_id in self.core.entries(self._run(self.core.lease(grace_seconds, limit))):
            try:
                sent += self._queue(event, object_id) is not None
            except Exception:  # stays leased; due again a grace period after the lease ends
                log.exception("outbox: could not queue %s", member(event, object_id))
        return sent


class AsyncOutbox:
    """Asyncio shell (the API: the entries of jobs and batches its cancels ended): as :class:`Outbox`."""

    def __init__(self, client: aioredis.Redis, keys: Keys, emitter: AsyncWebhookEmitter, jobs: AsyncJobStore,
                 batches: AsyncBatchStore, *, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.emitter = emitter
        self.jobs = jobs
        self.batches = batches
        self.core = OutboxCore(keys, lease_seconds)
        self._scripts = Scripts(client, *OutboxCore.SCRIPTS)

    async def _run(self, call: Call) -> Any:
        return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def _subject(self, event: str, object_id: str) -> Subject | None:
        if event == JOB_COMPLETED:
            return self.core.subject(event, job=await self.jobs.get(object_id))
        return self.core.subject(event, batch=await self.batches.get(object_id))

    async def flush(self, event: str, object_id: str) -> str | None:
        """As :meth:`Outbox.flush`."""
        if not await self._run(self.core.take(event, object_id)):
            return None
        return await self._queue(event, object_id)

    async def job_ended(self, job_id: str) -> JobEnded:
        """As :meth:`Outbox.job_ended`."""
        raw = await self.r.hget(self.keys.job(job_id), "batch_id")
        batch_id = str(raw) if raw else None
        sent = [await self.flush(event, object_id) for event, object_id in self.core.ended_events(job_id, batch_id)]
        return JobEnded(sent[0], batch_id, sent[1] if batch_id else None)

    async def _queue(self, event: str, object_id: str) -> str | None:
        subject = await self._subject(event, object_id)
        sent = None
        if subject is not None:
            sent = await self.emitter.emit(**self.core.send_args(event, object_id, subject))
        await self.r.zrem(self.keys.webhook_outbox, member(event, object_id))
        return sent

    async def sweep(self, grace_seconds: float, limit: int = 100) -> int:
        """As :meth:`Outbox.sweep`."""
        sent = 0
        for event, object_id in self.core.entries(await self._run(self.core.lease(grace_seconds, limit))):
            try:
                sent += await self._queue(event, object_id) is not None
            except Exception:
                log.exception("outbox: could not queue %s", member(event, object_id))
        return sent
