"""Job scripts: claim, finish, store a finished job, cancel, requeue (``textgen_core/store.py``).

The scripts that end a job start with ``fragments.JOB_END`` and, in the same call, release its
pending place, drop its lease, settle its batch item and record ``job.completed`` in the outbox.
"""

from __future__ import annotations

from textgen_core.scripts import define
from textgen_core.scripts.fragments import JOB_END, JOB_EXPIRE

# KEYS: job, leases, webhook outbox, active batches, tokens stream, deadlines. ARGV: worker, now,
# attempt_token, job ttl, max attempts, events channel, batch key prefix (``Keys.batch("")``), lease
# seconds, batch events channel, stream ttl. Atomically queued -> running for this attempt (taking its
# lease); or expires a job whose deadline passed ("deadline"); or gives up after max_attempts (a job
# that keeps stopping its worker, "gave_up"); else the status it has (another attempt may be running
# it: a message redelivered while the first delivery still runs must not run it twice).
CLAIM = define("job.claim", JOB_EXPIRE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'queued' then return st end
local dl = tonumber(redis.call('HGET', KEYS[1], 'deadline_at') or '')
if dl and dl <= tonumber(ARGV[2]) then
  expire_job(KEYS[1], KEYS[5], KEYS[6], KEYS[2], KEYS[3], KEYS[4], ARGV[7], ARGV[9], ARGV[6], ARGV[2], ARGV[10])
  return 'deadline'
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'finish_reason', 'error',
    'error', cjson.encode({message = 'gave up after ' .. ARGV[5] .. ' attempts: the job stopped its '
      .. 'worker each time', type = 'max_attempts_exceeded'}))
  release_pending(KEYS[1])
  drop_lease(KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[6], cjson.encode({id = redis.call('HGET', KEYS[1], 'id'), status = 'failed'}))
  settle_batch_item(KEYS[1], ARGV[7], KEYS[4], ARGV[9], KEYS[3], 'failed', ARGV[2])
  outbox_add(KEYS[3], KEYS[1], 'job.completed', redis.call('HGET', KEYS[1], 'id'), ARGV[2])
  return 'gave_up'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'attempt_token', ARGV[3],
  'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
take_lease(KEYS[1], KEYS[2], ARGV[3], tonumber(ARGV[2]) + tonumber(ARGV[8]), ARGV[4])
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then redis.call('HSETNX', batch_key(ARGV[7], bid), 'started_at', ARGV[2]) end
return 'claimed'
""")

# Ending a job with an outcome, for FINISH and CREATE_FINISHED. KEYS: job, tokens stream, history
# list, leases, webhook outbox, active batches. ARGV[2..13]: status, now, job ttl, fields (JSON object
# of strings), history entries (JSON list of strings), history max, history ttl, events channel,
# stream ttl, stream maxlen, batch key prefix (``Keys.batch("")``), batch events channel.
_END = JOB_END + """
local function end_job()
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
  release_pending(KEYS[1])
  drop_lease(KEYS[1], KEYS[4])
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
  settle_batch_item(KEYS[1], ARGV[12], KEYS[6], ARGV[13], KEYS[5], ARGV[2], ARGV[3])
  outbox_add(KEYS[5], KEYS[1], 'job.completed', redis.call('HGET', KEYS[1], 'id'), ARGV[3])
end
"""

# KEYS and ARGV[2..13] as ``_END``; ARGV[1]: attempt_token. Only the attempt that owns the job can
# finish it, exactly once. Returns 1 if it did.
FINISH = define("job.finish", _END + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[1] then return 0 end
end_job()
return 1
""")

# KEYS and ARGV[2..13] as ``_END``; ARGV[1]: the job record (JSON object of strings), ARGV[14]: its
# output. Stores a job that is finished already (a cache hit): the record, its text on the stream, then
# the end, as a worker's finish would. A batch item written queued a moment ago is finished only if
# still queued.
CREATE_FINISHED = define("job.create_finished", _END + """
local st = redis.call('HGET', KEYS[1], 'status')
if st and st ~= 'queued' then return 0 end
for k, v in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], k, v) end
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then redis.call('HSETNX', batch_key(ARGV[12], bid), 'started_at', ARGV[3]) end
if ARGV[14] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[11], '*', 'd', ARGV[14])
end
end_job()
return 1
""")

# KEYS: job, tokens stream, leases, webhook outbox, active batches. ARGV: owner, now, events channel,
# cancel channel, stream ttl, batch key prefix (``Keys.batch("")``), batch events channel. Returns the
# status afterwards ("dequeued": it was queued and is canceled now; "running": a stop was requested),
# or "missing".
CANCEL = define("job.cancel", JOB_END + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'missing' end
local id = redis.call('HGET', KEYS[1], 'id')
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[2], 'finish_reason', 'canceled',
    'output', '')
  release_pending(KEYS[1])
  drop_lease(KEYS[1], KEYS[3])
  redis.call('XADD', KEYS[2], '*', 'end', 'canceled')
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('PUBLISH', ARGV[3], cjson.encode({id = id, status = 'canceled'}))
  settle_batch_item(KEYS[1], ARGV[6], KEYS[5], ARGV[7], KEYS[4], 'canceled', ARGV[2])
  outbox_add(KEYS[4], KEYS[1], 'job.completed', id, ARGV[2])
  return 'dequeued'
end
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[4], id)
end
return st
""")

# KEYS: job. ARGV: attempt_token ('' : any attempt), refund ("1": the attempt does not count, it only
# waited). Hands a running job back to the queue (warm shutdown, lapsed lease, an identical job
# generating). Returns 1 if it did.
REQUEUE = define("job.requeue", """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'attempt_token', '')
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
return 1
""")

# KEYS: job, tokens stream, leases, the owner's unfinished-jobs counter, the owner's job index
# (``Keys.owner_jobs``). ARGV: owner, now, lease seconds, ttl, the owner's unfinished-jobs cap (0 = none).
# A failed job back to ``queued`` under the same id (``POST /v1/jobs/{id}/retry``, so two retries at once
# make one attempt). Returns "retried", "missing" (no such job, or another key's), "batch_item", "full"
# (the owner is at the cap, as a new job would be refused), or the status of a job that is not failed.
# The job is armed with a lease that no task holds: if the message the caller sends next is lost, the
# lease lapses and a reaper sends it again. It is indexed again at the retry's time: its record lives
# another ttl, and so does its place in ``GET /v1/jobs`` (the index drops members older than the ttl).
RETRY = define("job.retry", """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'missing' end
if st ~= 'failed' then return st end
local bid = redis.call('HGET', KEYS[1], 'batch_id')
if bid and bid ~= '' then return 'batch_item' end
local cap = tonumber(ARGV[5] or '0')
if cap > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= cap then return 'full' end
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
redis.call('ZADD', KEYS[5], ARGV[2], redis.call('HGET', KEYS[1], 'id'))
redis.call('EXPIRE', KEYS[5], ARGV[4])
return 'retried'
""")
