"""Deadline scripts: the sweep that expires queued jobs whose deadline came due (``textgen_core/deadlines.py``)."""

from __future__ import annotations

from textgen_core.scripts import define
from textgen_core.scripts.fragments import JOB_EXPIRE

# KEYS: job, tokens stream, deadlines, leases, webhook outbox, active batches. ARGV: job id, now, events
# channel, stream ttl, recheck seconds, batch key prefix (``Keys.batch("")``), batch events channel.
# For a job whose deadline came due: a queued one is expired now ("expired"); a running one is left to
# its worker's timer and looked at again after ``recheck`` seconds (if its worker died, the lease reaper
# queues it and the next sweep or claim expires it) ("running"); an ended or missing one leaves the set
# ("gone"). A deadline not yet due (the job was retried with a new one) is left in place ("later").
EXPIRE_DUE = define("deadline.expire_due", JOB_EXPIRE + """
local st = redis.call('HGET', KEYS[1], 'status')
local dl = tonumber(redis.call('HGET', KEYS[1], 'deadline_at') or '')
if not st or not dl then redis.call('ZREM', KEYS[3], ARGV[1]) return 'gone' end
if dl > tonumber(ARGV[2]) then redis.call('ZADD', KEYS[3], dl, ARGV[1]) return 'later' end
if st == 'queued' then
  expire_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[3], ARGV[2], ARGV[4])
  return 'expired'
end
if st == 'running' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[5]), ARGV[1])
  return 'running'
end
redis.call('ZREM', KEYS[3], ARGV[1])
return 'gone'
""")
