"""JobStore: job records in Redis hashes, moved between states only by atomic Lua scripts
(``textgen_core/scripts/jobs.py``).

One core (:class:`JobStoreCore`: the scripts' KEYS and ARGV, reply parsing, no I/O) and two thin
shells with the same methods: :class:`JobStore` over a synchronous client (workers: claim, stream,
finish) and :class:`AsyncJobStore` over an asyncio one (the API: create, read, cancel).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.jobs import ChatMessage, JobRecord, JobStatus
from textgen_core.keys import Keys
from textgen_core.priorities import DEFAULT_PRIORITY
from textgen_core.scripts import Scripts
from textgen_core.scripts import jobs as job_scripts
from textgen_core.scripts import pending as pending_scripts
from textgen_core.webhooks.records import parse_deliveries

log = logging.getLogger(__name__)

# Hash fields stored as plain strings; every other field is JSON.
_RAW = ("id", "owner", "model", "mode", "lane", "status", "worker", "conversation_id", "output",
        "finish_reason", "attempt_token", "webhook", "batch_id", "custom_id", "cache_key")
_NUM = ("created_at", "started_at", "finished_at", "attempts", "batch_size", "cache_ttl", "cache_hit", "deadline_at")
_JSON = ("input", "params", "metadata", "history", "usage", "error", "webhook_events_filter")


def encode_job(job: JobRecord) -> dict[str, str]:
    data = job.model_dump(mode="json")
    out: dict[str, str] = {}
    for name in _RAW:
        value = data.get(name)
        out[name] = "" if value is None else str(value)
    for name in _JSON:
        out[name] = json.dumps(data.get(name), separators=(",", ":"))
    timings = data["timings"]
    out["created_at"] = repr(timings["created_at"])
    out["started_at"] = out["finished_at"] = ""
    out["attempts"] = str(job.attempts)
    out["batch_size"] = "" if job.batch_size is None else str(job.batch_size)
    out["cancel_requested"] = "1" if job.cancel_requested else "0"
    out["cache_ttl"] = "" if job.cache_ttl is None else str(job.cache_ttl)
    out["cached"] = "1" if job.cached else "0"
    out["priority"] = str(job.priority)
    out["cache_hit"] = "" if timings["cache_hit"] is None else repr(timings["cache_hit"])
    out["deadline_at"] = "" if job.deadline_at is None else repr(job.deadline_at)
    return out


def _num(value: str | None) -> float | None:
    return float(value) if value else None


def decode_job(raw: dict[str, str], deliveries: list[str] | None = None) -> JobRecord:
    created = float(raw["created_at"])
    started = _num(raw.get("started_at"))
    finished = _num(raw.get("finished_at"))
    fields: dict[str, Any] = {name: (raw.get(name) or None) for name in _RAW if name != "attempt_token"}
    for name in _JSON:
        fields[name] = json.loads(raw[name]) if raw.get(name) else None
    fields["metadata"] = fields["metadata"] or {}
    fields["history"] = fields["history"] or []
    fields["webhook_events_filter"] = fields["webhook_events_filter"] or ["completed"]
    fields["webhook_deliveries"] = parse_deliveries(deliveries or [])
    fields["timings"] = {
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "queue_seconds": round(started - created, 4) if started else None,
        "generation_seconds": round(finished - started, 4) if (started and finished) else None,
        "cache_hit": _num(raw.get("cache_hit")),
    }
    fields["attempts"] = int(raw.get("attempts") or 0)
    fields["retries"] = int(raw.get("retries") or 0)
    fields["batch_size"] = int(raw["batch_size"]) if raw.get("batch_size") else None
    fields["cancel_requested"] = raw.get("cancel_requested") == "1"
    fields["cache_ttl"] = int(raw["cache_ttl"]) if raw.get("cache_ttl") else None
    fields["cached"] = raw.get("cached") == "1"
    fields["priority"] = int(raw.get("priority") or DEFAULT_PRIORITY)  # records from before priorities: 1
    fields["deadline_at"] = _num(raw.get("deadline_at"))
    return JobRecord.model_validate(fields)


class Call(NamedTuple):
    """One script call: the registered name, its KEYS and its ARGV."""

    script: str
    keys: list[str]
    args: list[Any]


class Claim(NamedTuple):
    owned: bool  # this attempt runs the job
    status: JobStatus | None  # the job's status afterwards; None: no such job
    ended: str | None = None  # the claim itself ended the job: "gave_up" (attempts used up) or "deadline"


class JobStoreCore:
    """What both shells share: the scripts' arguments and the meaning of their replies."""

    SCRIPTS = (job_scripts.CLAIM, job_scripts.FINISH, job_scripts.CREATE_FINISHED, job_scripts.CANCEL,
               job_scripts.REQUEUE, pending_scripts.ADMIT, pending_scripts.WITHDRAW)

    def __init__(self, keys: Keys, *, job_ttl: int, stream_ttl: int, stream_maxlen: int, lease_seconds: float):
        self.keys = keys
        self.job_ttl = job_ttl
        self.stream_ttl = stream_ttl
        self.stream_maxlen = stream_maxlen
        self.lease_seconds = lease_seconds

    # -- reads ---------------------------------------------------------------------------

    def record_keys(self, job_id: str) -> tuple[str, str]:
        """The job hash and its webhook deliveries list, read together by ``get``."""
        return self.keys.job(job_id), self.keys.webhook_deliveries(job_id)

    @staticmethod
    def record(raw: dict[str, str], deliveries: list[str], owner: str | None) -> JobRecord | None:
        """The job read, or None if it is missing or belongs to another owner than ``owner`` (None: any)."""
        if not raw or (owner is not None and raw.get("owner") != owner):
            return None
        return decode_job(raw, deliveries)

    @staticmethod
    def history(raw: list[str]) -> list[ChatMessage] | None:
        return [ChatMessage.model_validate_json(m) for m in raw] if raw else None

    # -- transitions ---------------------------------------------------------------------

    def create(self, job: JobRecord, max_pending: int) -> Call:
        pairs = [item for pair in encode_job(job).items() for item in pair]
        return Call(pending_scripts.ADMIT, [self.keys.pending(job.owner), self.keys.job(job.id)],
                    [max_pending, self.job_ttl, self.job_ttl, *pairs])

    @staticmethod
    def created(reply: Any) -> tuple[bool, int]:
        stored, count = reply
        return bool(stored), int(count)

    def delete(self, job_id: str) -> Call:
        return Call(pending_scripts.WITHDRAW, [self.keys.job(job_id), self.keys.tokens(job_id)], [])

    def claim(self, job_id: str, worker: str, attempt_token: str, max_attempts: int) -> Call:
        keys = self.keys
        return Call(job_scripts.CLAIM, [keys.job(job_id), keys.leases, keys.webhook_outbox, keys.active_batches,
                                        keys.tokens(job_id), keys.deadlines],
                    [worker, time.time(), attempt_token, self.job_ttl, max_attempts, keys.events_channel,
                     keys.batch(""), self.lease_seconds, keys.batch_events_channel, self.stream_ttl])

    @staticmethod
    def claimed(reply: str) -> Claim:
        if reply == "claimed":
            return Claim(True, JobStatus.running)
        if reply == "gave_up":
            return Claim(False, JobStatus.failed, ended="gave_up")
        if reply == "deadline":
            return Claim(False, JobStatus.expired, ended="deadline")
        return Claim(False, None if reply == "missing" else JobStatus(reply))

    def _end(self, job: JobRecord, status: JobStatus, fields: dict[str, Any],
             history_append: list[ChatMessage] | None, history_max_turns: int,
             history_ttl: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV[2..13] of the scripts that end a job with an outcome (``scripts.jobs._END``)."""
        encoded = {k: (v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))) for k, v in fields.items()}
        entries = [m.model_dump_json() for m in history_append or []] if job.conversation_id else []
        keys = self.keys
        return ([keys.job(job.id), keys.tokens(job.id), keys.history(job.owner, job.conversation_id or "-"),
                 keys.leases, keys.webhook_outbox, keys.active_batches],
                [status.value, time.time(), self.job_ttl, json.dumps(encoded), json.dumps(entries),
                 history_max_turns * 2, history_ttl, keys.events_channel, self.stream_ttl, self.stream_maxlen,
                 keys.batch(""), keys.batch_events_channel])

    def finish(self, job: JobRecord, attempt_token: str, status: JobStatus, fields: dict[str, Any],
               history_append: list[ChatMessage] | None, history_max_turns: int, history_ttl: int) -> Call:
        keys, args = self._end(job, status, fields, history_append, history_max_turns, history_ttl)
        return Call(job_scripts.FINISH, keys, [attempt_token, *args])

    def create_finished(self, job: JobRecord, fields: dict[str, Any], history_append: list[ChatMessage] | None,
                        history_max_turns: int, history_ttl: int) -> Call:
        keys, args = self._end(job, JobStatus.succeeded, fields, history_append, history_max_turns, history_ttl)
        return Call(job_scripts.CREATE_FINISHED, keys,
                    [json.dumps(encode_job(job)), *args, str(fields.get("output") or "")])

    def cancel(self, job_id: str, owner: str) -> Call:
        keys = self.keys
        return Call(job_scripts.CANCEL, [keys.job(job_id), keys.tokens(job_id), keys.leases, keys.webhook_outbox,
                                 keys.active_batches],
                    [owner, time.time(), keys.events_channel, keys.cancel_channel, self.stream_ttl, keys.batch(""),
                     keys.batch_events_channel])

    @staticmethod
    def canceled(reply: str) -> str:
        """The cancel's outcome: "canceled" (it was queued and is now), or the status it has, or "missing"."""
        return "canceled" if reply == "dequeued" else reply

    def requeue(self, job_id: str, attempt_token: str, refund_attempt: bool) -> Call:
        return Call(job_scripts.REQUEUE, [self.keys.job(job_id)], [attempt_token, "1" if refund_attempt else "0"])


class JobStore:
    """Synchronous shell (workers). ``on_terminal`` (optional) is called with the job id after a call
    of this store moved a job into a terminal state, exactly once per job; webhooks hang off it (the
    scripts have already recorded ``job.completed`` in the webhook outbox, so a crash before the hook
    loses nothing)."""

    on_terminal: Callable[[str], None] | None = None

    def __init__(self, client: redis.Redis, keys: Keys, *, job_ttl: int, stream_ttl: int,
                 stream_maxlen: int = 10_000, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.core = JobStoreCore(keys, job_ttl=job_ttl, stream_ttl=stream_ttl, stream_maxlen=stream_maxlen,
                                 lease_seconds=lease_seconds)
        self._scripts = Scripts(client, *JobStoreCore.SCRIPTS)

    def _run(self, call: Call) -> Any:
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def _ended(self, job_id: str) -> None:
        if self.on_terminal is not None:
            try:
                self.on_terminal(job_id)
            except Exception:  # a hook must never undo or hide the transition itself
                log.exception("on_terminal hook failed for %s", job_id)

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, if it exists and (with ``owner``) belongs to ``owner``: others see nothing."""
        record_key, deliveries_key = self.core.record_keys(job_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(record_key)
        pipe.lrange(deliveries_key, 0, -1)
        raw, deliveries = pipe.execute()
        return self.core.record(raw, deliveries, owner)

    def create(self, job: JobRecord, *, max_pending: int = 0) -> tuple[bool, int]:
        """Store the job unless its owner already has ``max_pending`` unfinished jobs (0: no cap).
        Returns whether it was stored and the owner's unfinished jobs afterwards."""
        return self.core.created(self._run(self.core.create(job, max_pending)))

    def create_finished(self, job: JobRecord, *, fields: dict[str, Any], history_append: list[ChatMessage],
                        history_max_turns: int, history_ttl: int) -> bool:
        """Store ``job`` already ``succeeded`` with ``fields`` (a cache hit), ending it as a worker's
        finish would: stream, history, events, batch counts, ``on_terminal``. False: a batch item that
        was canceled meanwhile (it keeps that outcome)."""
        done = bool(self._run(self.core.create_finished(job, fields, history_append, history_max_turns, history_ttl)))
        if done:
            self._ended(job.id)
        return done

    def delete(self, job_id: str) -> None:
        """Take back a stored job that never reached the queue (and its place under the cap)."""
        self._run(self.core.delete(job_id))

    def claim(self, job_id: str, *, worker: str, attempt_token: str, max_attempts: int) -> Claim:
        """Atomically queued -> running for this attempt; says whether this attempt owns the job."""
        claim = self.core.claimed(self._run(self.core.claim(job_id, worker, attempt_token, max_attempts)))
        if claim.ended:
            self._ended(job_id)
        return claim

    def append_deltas(self, deltas: dict[str, str]) -> None:
        """One pipelined round trip for a decoding step's text deltas of many jobs."""
        if not deltas:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id, text in deltas.items():
            key = self.keys.tokens(job_id)
            pipe.xadd(key, {"d": text}, maxlen=self.core.stream_maxlen, approximate=True)
            pipe.expire(key, self.core.stream_ttl)
        pipe.execute()

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.keys.job(job_id), "cancel_requested") == "1"

    def finish(self, job: JobRecord, *, attempt_token: str, status: JobStatus, fields: dict[str, Any],
               history_append: list[ChatMessage] | None = None, history_max_turns: int = 20,
               history_ttl: int = 3600) -> bool:
        """Write the outcome (and append history) if this attempt still owns the job."""
        done = bool(self._run(self.core.finish(job, attempt_token, status, fields, history_append,
                                               history_max_turns, history_ttl)))
        if done:
            self._ended(job.id)
        return done

    def requeue(self, job_id: str, attempt_token: str = "", *, refund_attempt: bool = False) -> bool:
        """Hand a running job back to its queue (``refund_attempt``: the attempt only waited)."""
        return bool(self._run(self.core.requeue(job_id, attempt_token, refund_attempt)))

    def cancel(self, job_id: str, owner: str) -> str:
        """Cancel the owner's job: "canceled" if it was queued (it ends now), "running" if a stop was
        requested, else its status or "missing"."""
        outcome = self.core.canceled(self._run(self.core.cancel(job_id, owner)))
        if outcome == "canceled":
            self._ended(job_id)
        return outcome

    def history(self, owner: str, conversation_id: str) -> list[ChatMessage] | None:
        return self.core.history(self.r.lrange(self.keys.history(owner, conversation_id), 0, -1))  # type: ignore[arg-type]

    def delete_history(self, owner: str, conversation_id: str) -> bool:
        return bool(self.r.delete(self.keys.history(owner, conversation_id)))


class AsyncJobStore:
    """Asyncio shell (the API): the methods of :class:`JobStore`, awaited. ``on_terminal`` likewise."""

    on_terminal: Callable[[str], Awaitable[None]] | None = None

    def __init__(self, client: aioredis.Redis, keys: Keys, *, job_ttl: int, stream_ttl: int,
                 stream_maxlen: int = 10_000, lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.core = JobStoreCore(keys, job_ttl=job_ttl, stream_ttl=stream_ttl, stream_maxlen=stream_maxlen,
                                 lease_seconds=lease_seconds)
        self._scripts = Scripts(client, *JobStoreCore.SCRIPTS)

    async def _run(self, call: Call) -> Any:
        return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def _ended(self, job_id: str) -> None:
        if self.on_terminal is not None:
            try:
                await self.on_terminal(job_id)
            except Exception:  # a hook must never undo or hide the transition itself
                log.exception("on_terminal hook failed for %s", job_id)

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """As :meth:`JobStore.get`."""
        record_key, deliveries_key = self.core.record_keys(job_id)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(record_key)
            pipe.lrange(deliveries_key, 0, -1)
            raw, deliveries = await pipe.execute()
        return self.core.record(raw, deliveries, owner)

    async def create(self, job: JobRecord, *, max_pending: int = 0) -> tuple[bool, int]:
        """As :meth:`JobStore.create`."""
        return self.core.created(await self._run(self.core.create(job, max_pending)))

    async def create_finished(self, job: JobRecord, *, fields: dict[str, Any], history_append: list[ChatMessage],
                              history_max_turns: int, history_ttl: int) -> bool:
        """As :meth:`JobStore.create_finished`."""
        done = bool(await self._run(self.core.create_finished(job, fields, history_append, history_max_turns,
                                                              history_ttl)))
        if done:
            await self._ended(job.id)
        return done

    async def delete(self, job_id: str) -> None:
        """As :meth:`JobStore.delete`."""
        await self._run(self.core.delete(job_id))

    async def claim(self, job_id: str, *, worker: str, attempt_token: str, max_attempts: int) -> Claim:
        """As :meth:`JobStore.claim`."""
        claim = self.core.claimed(await self._run(self.core.claim(job_id, worker, attempt_token, max_attempts)))
        if claim.ended:
            await self._ended(job_id)
        return claim

    async def append_deltas(self, deltas: dict[str, str]) -> None:
        """As :meth:`JobStore.append_deltas`."""
        if not deltas:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id, text in deltas.items():
                key = self.keys.tokens(job_id)
                pipe.xadd(key, {"d": text}, maxlen=self.core.stream_maxlen, approximate=True)
                pipe.expire(key, self.core.stream_ttl)
            await pipe.execute()

    async def cancel_requested(self, job_id: str) -> bool:
        return await self.r.hget(self.keys.job(job_id), "cancel_requested") == "1"

    async def finish(self, job: JobRecord, *, attempt_token: str, status: JobStatus, fields: dict[str, Any],
                     history_append: list[ChatMessage] | None = None, history_max_turns: int = 20,
                     history_ttl: int = 3600) -> bool:
        """As :meth:`JobStore.finish`."""
        done = bool(await self._run(self.core.finish(job, attempt_token, status, fields, history_append,
                                                     history_max_turns, history_ttl)))
        if done:
            await self._ended(job.id)
        return done

    async def requeue(self, job_id: str, attempt_token: str = "", *, refund_attempt: bool = False) -> bool:
        """As :meth:`JobStore.requeue`."""
        return bool(await self._run(self.core.requeue(job_id, attempt_token, refund_attempt)))

    async def cancel(self, job_id: str, owner: str) -> str:
        """As :meth:`JobStore.cancel`."""
        outcome = self.core.canceled(await self._run(self.core.cancel(job_id, owner)))
        if outcome == "canceled":
            await self._ended(job_id)
        return outcome

    async def history(self, owner: str, conversation_id: str) -> list[ChatMessage] | None:
        return self.core.history(await self.r.lrange(self.keys.history(owner, conversation_id), 0, -1))

    async def delete_history(self, owner: str, conversation_id: str) -> bool:
        return bool(await self.r.delete(self.keys.history(owner, conversation_id)))
