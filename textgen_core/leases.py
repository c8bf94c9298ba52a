"""Leases: which worker holds which job, so the job of a worker that died runs again in seconds.

With the Redis broker, an unacknowledged message of a SIGKILLed worker comes back only after
the visibility timeout (an hour). So a worker takes a lease on a job when its task starts
(``hold``: a queued job, on either lane) and again when it claims it (the claim script, with the
attempt's token); its heartbeat renews the leases of the jobs it holds; the scripts that end a
job drop its lease. A lease that lapses means its holder is gone: one reaper (whichever runs the
reap script first) puts a running job back to ``queued`` and re-sends its message, and a
message that comes back later finds the job claimed or done and does nothing.

A lease is two things kept together by the scripts: the job id in the ``Keys.leases`` sorted set,
scored by expiry, and the holder's token in the job hash's ``lease`` field.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import redis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts, define

# Lua functions for the job scripts (claim, finish, cancel, give up). The set's name is built from
# the prefix here; it must match Keys.leases.
LEASE_LUA = """
local function take_lease(job, prefix, token, expiry, ttl)
  local leases = prefix .. ':leases'
  redis.call('HSET', job, 'lease', token)
  redis.call('ZADD', leases, expiry, redis.call('HGET', job, 'id'))
  redis.call('EXPIRE', leases, ttl)
end
local function drop_lease(job, prefix)
  redis.call('HDEL', job, 'lease')
  redis.call('ZREM', prefix .. ':leases', redis.call('HGET', job, 'id'))
end
"""

# KEYS: job. ARGV: prefix, token, now, lease seconds, leases ttl. Holds a queued job unless a live
# lease of another task holds it (a running job is held by the attempt that claimed it; a job the
# reaper re-sent has a live lease with no holder, for the task of the re-sent message to take).
HOLD = define("lease.hold", LEASE_LUA + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local now = tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], 'lease')
if current and current ~= '' then
  local expiry = redis.call('ZSCORE', ARGV[1] .. ':leases', redis.call('HGET', KEYS[1], 'id'))
  if expiry and tonumber(expiry) > now then return 0 end
end
take_lease(KEYS[1], ARGV[1], ARGV[2], now + tonumber(ARGV[4]), ARGV[5])
return 1
""")

# KEYS: leases. ARGV: prefix, new expiry, then job id and token pairs. Extends only leases still ours.
RENEW = define("lease.renew", """
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('HGET', ARGV[1] .. ':job:' .. ARGV[i], 'lease') == ARGV[i + 1] then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[i])
  end
end
return n
""")

# KEYS: job. ARGV: prefix, token. Drops the lease if it is still ours, except on a job our attempt
# claimed and did not finish (a Redis error on the way, say): that lease is left to lapse, so a
# reaper hands the job back.
RELEASE = define("lease.release", LEASE_LUA + """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'attempt_token') == ARGV[2]
  then return 0 end
drop_lease(KEYS[1], ARGV[1])
return 1
""")

# KEYS: job, leases. ARGV: job id, now, lease seconds. If the job's lease lapsed: put a running job
# back to queued, re-arm the lease with no holder (so if the re-send below is lost, it lapses and is
# re-sent again), and return {model, lane, batch id} for the caller to re-send; else (renewed,
# reaped by another worker, ended) nil. One script call, so exactly one reaper wins.
REAP = define("lease.reap", """
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then return nil end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'attempt_token', '')
elseif st ~= 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if st then redis.call('HDEL', KEYS[1], 'lease') end
  return nil
end
redis.call('HSET', KEYS[1], 'lease', '')
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'model', 'lane', 'batch_id')
return {f[1] or '', f[2] or 'interactive', f[3] or ''}
""")


class Reaped(NamedTuple):
    job_id: str
    model: str
    lane: str
    batch_id: str  # "" for a job outside any batch


class JobLeases:
    """One worker process's leases: taken by its tasks, renewed by its heartbeat."""

    def __init__(self, client: redis.Redis, keys: Keys, *, lease_seconds: float, ttl: int):
        self.r = client
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.ttl = ttl
        # token of one of this process's tasks -> its job id. Keyed by token, not job: a duplicate
        # message of a job (a re-send, a redelivery) run by this process must not replace, nor drop on
        # its way out, the entry of the task that holds the job, or that lease stops being renewed.
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._scripts = Scripts(client, HOLD, RENEW, RELEASE, REAP)

    @contextmanager
    def holding(self, job_id: str) -> Iterator[str]:
        """Hold the job while the block runs; yields the token the attempt must claim with.

        If the block raises, the lease is not dropped but left to lapse: a job this process
        could not finish (Redis went away mid-job, say) is handed back by a reaper.
        """
        token = uuid.uuid4().hex
        with self._lock:
            self._held[token] = job_id
        try:
            self._scripts[HOLD](keys=[self.keys.job(job_id)],
                       args=[self.keys.prefix, token, time.time(), self.lease_seconds, self.ttl])
            yield token
        except BaseException:
            self._forget(job_id, token)
            raise
        self._forget(job_id, token)
        self._scripts[RELEASE](keys=[self.keys.job(job_id)], args=[self.keys.prefix, token])

    def _forget(self, job_id: str, token: str) -> None:
        with self._lock:
            if self._held.get(token) == job_id:
                del self._held[token]

    @property
    def held(self) -> int:
        with self._lock:
            return len(set(self._held.values()))

    def renew(self) -> int:
        """Extend every lease this process still holds (called by the heartbeat)."""
        with self._lock:
            pairs = [item for token, job_id in self._held.items() for item in (job_id, token)]
        if not pairs:
            return 0
        expiry = time.time() + self.lease_seconds
        return int(self._scripts[RENEW](keys=[self.keys.leases], args=[self.keys.prefix, expiry, *pairs]))

    def reap(self, limit: int = 100) -> list[Reaped]:
        """Take back up to ``limit`` jobs whose lease lapsed; the caller re-sends their messages.

        This process's own leases are renewed first: a lease that lapsed while Redis was away (a
        restart) must not cost the job an attempt when its holder is alive and reaping."""
        self.renew()
        now = time.time()
        out: list[Reaped] = []
        lapsed: list[str] = self.r.zrangebyscore(self.keys.leases, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        for job_id in lapsed:
            row = self._scripts[REAP](keys=[self.keys.job(job_id), self.keys.leases],
                                      args=[job_id, now, self.lease_seconds])
            if row:
                out.append(Reaped(job_id, *row))
        return out
