"""JobStore: job records in Redis hashes, moved between states only by atomic Lua scripts.

The API holds an :class:`AsyncJobStore` (create, read, cancel); a worker holds a
:class:`JobStore` (claim, stream, finish). Both encode records the same way, below.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.batch_settle import SETTLE_LUA
from textgen_core.deadlines import EXPIRE_LUA
from textgen_core.jobs import ChatMessage, JobRecord, JobStatus
from textgen_core.keys import Keys
from textgen_core.leases import LEASE_LUA
from textgen_core.pending import ADMIT, RELEASE_PENDING_LUA, WITHDRAW
from textgen_core.scripts import Scripts, define
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
    fields["batch_size"] = int(raw["batch_size"]) if raw.get("batch_size") else None
    fields["cancel_requested"] = raw.get("cancel_requested") == "1"
    fields["cache_ttl"] = int(raw["cache_ttl"]) if raw.get("cache_ttl") else None
    fields["cached"] = raw.get("cached") == "1"
    fields["deadline_at"] = _num(raw.get("deadline_at"))
    return JobRecord.model_validate(fields)


# KEYS: job, tokens stream, deadlines set. ARGV: worker, now, attempt_token, ttl, max_attempts, events channel,
# key prefix, lease seconds, stream ttl. Returns "claimed" when this attempt now owns the job (and its lease),
# "deadline" when it expired the job instead (its deadline passed), else the status it has (another attempt
# may be running it: a message redelivered while the first delivery still runs must not run it twice).
CLAIM = define("job.claim", SETTLE_LUA + RELEASE_PENDING_LUA + LEASE_LUA + EXPIRE_LUA + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'queued' then return st end
local dl = tonumber(redis.call('HGET', KEYS[1], 'deadline_at') or '')
if dl and dl <= tonumber(ARGV[2]) then
  expire_job(KEYS[1], KEYS[2], KEYS[3], ARGV[7], ARGV[2], ARGV[6], ARGV[9])
  return 'deadline'
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'finish_reason', 'error',
    'error', cjson.encode({message = 'gave up after ' .. ARGV[5] .. ' attempts: the job stopped its '
      .. 'worker each time', type = 'max_attempts_exceeded'}))
  release_pending(KEYS[1])
  drop_lease(KEYS[1], ARGV[7])
  redis.call('PUBLISH', ARGV[6], cjson.encode({id = redis.call('HGET', KEYS[1], 'id'), status = 'failed'}))
  settle_batch_item(KEYS[1], ARGV[7], 'failed', ARGV[2])
  outbox_add(ARGV[7], KEYS[1], 'job.completed', redis.call('HGET', KEYS[1], 'id'), ARGV[2])
  return 'gave_up'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'attempt_token', ARGV[3],
  'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
take_lease(KEYS[1], ARGV[7], ARGV[3], tonumber(ARGV[2]) + tonumber(ARGV[8]), ARGV[4])
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then redis.call('HSETNX', ARGV[7] .. ':batch:' .. bid, 'started_at', ARGV[2]) end
return 'claimed'
""")

# Ending a job with an outcome: KEYS as below; ARGV[2..12] as below (ARGV[1] is the caller's own).
# Used by FINISH (a worker's attempt) and CREATE_FINISHED (a cache hit answered at submit).
_END_LUA = SETTLE_LUA + RELEASE_PENDING_LUA + LEASE_LUA + """
local function end_job()
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
  release_pending(KEYS[1])
  drop_lease(KEYS[1], ARGV[12])
  for k, v in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[1], k, v) end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  local entries = cjson.decode(ARGV[6])
  if #entries > 0 then
    for _, e in ipairs(entries) do redis.call('RPUSH', KEYS[3], e) end
    redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
    redis.call('EXPIRE', KEYS[3], ARGV[8])
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[11], '*', 'end', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
  redis.call('PUBLISH', ARGV[9], cjson.encode({id = redis.call('HGET', KEYS[1], 'id'), status = ARGV[2]}))
  settle_batch_item(KEYS[1], ARGV[12], ARGV[2], ARGV[3])
  outbox_add(ARGV[12], KEYS[1], 'job.completed', redis.call('HGET', KEYS[1], 'id'), ARGV[3])
end
"""

# KEYS: job, tokens stream, history list. ARGV: attempt_token, status, now, ttl, fields (JSON object
# of strings), history entries (JSON list of strings), history max, history ttl, events channel,
# stream ttl, stream maxlen, key prefix. Only the attempt that owns the job can finish it, exactly once.
FINISH = define("job.finish", _END_LUA + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[1] then return 0 end
end_job()
return 1
""")

# KEYS and ARGV[2..12] as FINISH; ARGV[1]: the job record (JSON object of strings), ARGV[13]: its output.
# Stores a job that is finished already (a cache hit): the record, its text on the stream, then the end,
# as a worker's finish would. A batch item written queued a moment ago is finished only if still queued.
CREATE_FINISHED = define("job.create_finished", _END_LUA + """
local st = redis.call('HGET', KEYS[1], 'status')
if st and st ~= 'queued' then return 0 end
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then redis.call('HSETNX', ARGV[12] .. ':batch:' .. bid, 'started_at', ARGV[3]) end
if ARGV[13] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[11], '*', 'd', ARGV[13])
end
end_job()
return 1
""")

# KEYS: job, tokens stream. ARGV: owner, now, events channel, cancel channel, stream ttl, key prefix.
# Returns the status afterwards ("running" means a stop was requested), or "missing".
CANCEL = define("job.cancel", SETTLE_LUA + RELEASE_PENDING_LUA + LEASE_LUA + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'missing' end
local id = redis.call('HGET', KEYS[1], 'id')
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[2], 'finish_reason', 'canceled',
    'output', '')
  release_pending(KEYS[1])
  drop_lease(KEYS[1], ARGV[6])
  redis.call('XADD', KEYS[2], '*', 'end', 'canceled')
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('PUBLISH', ARGV[3], cjson.encode({id = id, status = 'canceled'}))
  settle_batch_item(KEYS[1], ARGV[6], 'canceled', ARGV[2])
  outbox_add(ARGV[6], KEYS[1], 'job.completed', id, ARGV[2])
  return 'dequeued'
end
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[4], id)
end
return st
""")

# KEYS: job. ARGV: attempt_token, refund ("1": the attempt does not count, it only waited).
# Hands a running job back to the queue (warm shutdown, lapsed lease, an identical job generating).
REQUEUE = define("job.requeue", """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'attempt_token', '')
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
return 1
""")


def _end_args(keys: Keys, job: JobRecord, *, status: JobStatus, ttl: int, fields: dict[str, Any],
              history_append: list[ChatMessage] | None, history_max_turns: int, history_ttl: int,
              stream_ttl: int, stream_maxlen: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV[2..12] of the scripts built on ``_END_LUA``."""
    encoded = {k: (v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))) for k, v in fields.items()}
    entries = [m.model_dump_json() for m in history_append or []] if job.conversation_id else []
    history_key = keys.history(job.owner, job.conversation_id or "-")
    return ([keys.job(job.id), keys.tokens(job.id), history_key],
            [status.value, time.time(), ttl, json.dumps(encoded), json.dumps(entries), history_max_turns * 2,
             history_ttl, keys.events_channel, stream_ttl, stream_maxlen, keys.prefix])


class Claim(NamedTuple):
    owned: bool  # this attempt runs the job
    status: JobStatus | None  # the job's status afterwards; None: no such job
    ended: str | None = None  # the claim itself ended the job: "gave_up" (attempts used up) or "deadline"


class JobStore:
    """Worker-side store over a synchronous Redis client.

    ``on_terminal`` (optional) is called with the job id after a call of this store moved a job
    into a terminal state, exactly once per job; webhooks hang off it (the scripts have already
    recorded ``job.completed`` in the webhook outbox, so a crash before the hook loses nothing).
    """

    on_terminal: Callable[[str], None] | None = None

    def __init__(self, client: redis.Redis, keys: Keys, *, job_ttl: int, stream_ttl: int, stream_maxlen: int,
                 lease_seconds: float = 30.0):
        self.r = client
        self.keys = keys
        self.job_ttl = job_ttl
        self.lease_seconds = lease_seconds
        self.stream_ttl = stream_ttl
        self.stream_maxlen = stream_maxlen
        self._scripts = Scripts(client, CLAIM, FINISH, REQUEUE)

    def get(self, job_id: str) -> JobRecord | None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(job_id))
        pipe.lrange(self.keys.webhook_deliveries(job_id), 0, -1)
        raw, deliveries = pipe.execute()
        return decode_job(raw, deliveries) if raw else None

    def _ended(self, job_id: str) -> None:
        if self.on_terminal is not None:
            try:
                self.on_terminal(job_id)
            except Exception:  # a hook must never undo or hide the transition itself
                log.exception("on_terminal hook failed for %s", job_id)

    def claim(self, job_id: str, *, worker: str, attempt_token: str, max_attempts: int) -> Claim:
        """Atomically queued -> running for this attempt; says whether this attempt owns the job."""
        result = self._scripts[CLAIM](
            keys=[self.keys.job(job_id), self.keys.tokens(job_id), self.keys.deadlines],
            args=[worker, time.time(), attempt_token, self.job_ttl, max_attempts, self.keys.events_channel,
                  self.keys.prefix, self.lease_seconds, self.stream_ttl],
        )
        if result == "claimed":
            return Claim(True, JobStatus.running)
        if result in ("gave_up", "deadline"):
            self._ended(job_id)
            return Claim(False, JobStatus.failed if result == "gave_up" else JobStatus.expired, ended=str(result))
        return Claim(False, None if result == "missing" else JobStatus(result))

    def append_deltas(self, deltas: dict[str, str]) -> None:
        """One pipelined round trip for a decoding step's text deltas of many jobs."""
        if not deltas:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id, text in deltas.items():
            key = self.keys.tokens(job_id)
            pipe.xadd(key, {"d": text}, maxlen=self.stream_maxlen, approximate=True)
            pipe.expire(key, self.stream_ttl)
        pipe.execute()

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.keys.job(job_id), "cancel_requested") == "1"

    def finish(
        self,
        job: JobRecord,
        *,
        attempt_token: str,
        status: JobStatus,
        fields: dict[str, Any],
        history_append: list[ChatMessage] | None = None,
        history_max_turns: int = 20,
        history_ttl: int = 3600,
    ) -> bool:
        """Write the outcome (and append history) if this attempt still owns the job."""
        keys, args = _end_args(self.keys, job, status=status, ttl=self.job_ttl, fields=fields,
                               history_append=history_append, history_max_turns=history_max_turns,
                               history_ttl=history_ttl, stream_ttl=self.stream_ttl, stream_maxlen=self.stream_maxlen)
        done = self._scripts[FINISH](keys=keys, args=[attempt_token, *args])
        if done:
            self._ended(job.id)
        return bool(done)

    def requeue(self, job_id: str, attempt_token: str = "", *, refund_attempt: bool = False) -> bool:
        """Hand a running job back to its queue (``refund_attempt``: the attempt only waited)."""
        return bool(self._scripts[REQUEUE](keys=[self.keys.job(job_id)],
                                           args=[attempt_token, "1" if refund_attempt else "0"]))


class AsyncJobStore:
    """API-side store over an asyncio Redis client. ``on_terminal`` as in :class:`JobStore`."""

    on_terminal: Callable[[str], Awaitable[None]] | None = None

    def __init__(self, client: aioredis.Redis, keys: Keys, *, job_ttl: int, stream_ttl: int,
                 stream_maxlen: int = 10_000):
        self.r = client
        self.keys = keys
        self.job_ttl = job_ttl
        self.stream_ttl = stream_ttl
        self.stream_maxlen = stream_maxlen
        self._scripts = Scripts(client, CANCEL, CREATE_FINISHED, ADMIT, WITHDRAW)

    async def create(self, job: JobRecord, *, max_pending: int = 0) -> tuple[bool, int]:
        """Store the job unless its owner already has ``max_pending`` unfinished jobs (0: no cap).
        Returns whether it was stored and the owner's unfinished jobs afterwards."""
        pairs = [item for pair in encode_job(job).items() for item in pair]
        stored, count = await self._scripts[ADMIT](
            keys=[self.keys.pending(job.owner), self.keys.job(job.id)],
            args=[max_pending, self.job_ttl, self.job_ttl, *pairs],
        )
        return bool(stored), int(count)

    async def create_finished(self, job: JobRecord, *, fields: dict[str, Any], history_append: list[ChatMessage],
                              history_max_turns: int, history_ttl: int) -> bool:
        """Store ``job`` already ``succeeded`` with ``fields`` (a cache hit), ending it as a worker's
        finish would: stream, history, events, batch counts, ``on_terminal``. False: a batch item that
        was canceled meanwhile (it keeps that outcome)."""
        keys, args = _end_args(self.keys, job, status=JobStatus.succeeded, ttl=self.job_ttl, fields=fields,
                               history_append=history_append, history_max_turns=history_max_turns,
                               history_ttl=history_ttl, stream_ttl=self.stream_ttl, stream_maxlen=self.stream_maxlen)
        done = await self._scripts[CREATE_FINISHED](keys=keys, args=[json.dumps(encode_job(job)), *args,
                                                            str(fields.get("output") or "")])
        if done and self.on_terminal is not None:
            try:
                await self.on_terminal(job.id)
            except Exception:
                log.exception("on_terminal hook failed for %s", job.id)
        return bool(done)

    async def delete(self, job_id: str) -> None:
        """Take back a stored job that never reached the queue (and its place under the cap)."""
        await self._scripts[WITHDRAW](keys=[self.keys.job(job_id), self.keys.tokens(job_id)])

    async def get(self, job_id: str, owner: str) -> JobRecord | None:
        """The job if it exists and belongs to ``owner`` (others see nothing)."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.lrange(self.keys.webhook_deliveries(job_id), 0, -1)
            raw, deliveries = await pipe.execute()
        if not raw or raw.get("owner") != owner:
            return None
        return decode_job(raw, deliveries)

    async def cancel(self, job_id: str, owner: str) -> str:
        outcome: str = await self._scripts[CANCEL](
            keys=[self.keys.job(job_id), self.keys.tokens(job_id)],
            args=[owner, time.time(), self.keys.events_channel, self.keys.cancel_channel, self.stream_ttl,
                  self.keys.prefix],
        )
        if outcome != "dequeued":
            return outcome
        if self.on_terminal is not None:
            try:
                await self.on_terminal(job_id)
            except Exception:
                log.exception("on_terminal hook failed for %s", job_id)
        return "canceled"

    async def history(self, owner: str, conversation_id: str) -> list[ChatMessage] | None:
        raw = await self.r.lrange(self.keys.history(owner, conversation_id), 0, -1)
        return [ChatMessage.model_validate_json(m) for m in raw] if raw else None

    async def delete_history(self, owner: str, conversation_id: str) -> bool:
        return bool(await self.r.delete(self.keys.history(owner, conversation_id)))
