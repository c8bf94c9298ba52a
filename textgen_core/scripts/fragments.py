"""Lua functions shared by the scripts that end a job, composed in one place (``JOB_END``).

Each fragment defines ``local function``s only; a script that needs them starts with the named
composition below, never with its own concatenation of fragments. Every key a function touches
comes in as an argument (from KEYS), with one exception, ``batch_key``: a job's batch is known
only inside Lua (the ``batch_id`` field of the job hash), so its key is built there from the
prefix ``Keys.batch("")`` that the caller passes in ARGV.
"""

from __future__ import annotations

# ``release_pending(job)``: give back the job's place in its owner's unfinished-jobs counter, once.
# The counter's name is the job hash's ``pending_key`` field, written at admission from
# ``Keys.pending`` or ``Keys.pending_batch_items`` (so it is a stored name, not one rebuilt here).
RELEASE_PENDING = """
local function release_pending(job)
  local counter = redis.call('HGET', job, 'pending_key')
  if counter and counter ~= '' then
    redis.call('HDEL', job, 'pending_key')
    if redis.call('DECR', counter) <= 0 then redis.call('DEL', counter) end
  end
end
"""

# ``take_lease(job, leases, token, expiry, ttl)`` and ``drop_lease(job, leases)``: a lease is the job
# id in the ``Keys.leases`` sorted set (scored by expiry) and the holder's token in the job hash.
LEASE = """
local function take_lease(job, leases, token, expiry, ttl)
  redis.call('HSET', job, 'lease', token)
  redis.call('ZADD', leases, expiry, redis.call('HGET', job, 'id'))
  redis.call('EXPIRE', leases, ttl)
end
local function drop_lease(job, leases)
  redis.call('HDEL', job, 'lease')
  redis.call('ZREM', leases, redis.call('HGET', job, 'id'))
end
"""

# ``outbox_add(outbox, hkey, event, object_id, now)``: record ``event|object_id`` in ``Keys.webhook_outbox``
# if the job or batch hash ``hkey`` has a webhook that wants completion. Members as
# ``textgen_core.webhook_events.outbox.member``.
OUTBOX = """
local function outbox_wants(hkey)
  local hook = redis.call('HGET', hkey, 'webhook')
  if not hook or hook == '' then return false end
  local f = redis.call('HGET', hkey, 'webhook_events_filter')
  return not f or f == '' or f == 'null' or string.find(f, '"completed"', 1, true) ~= nil
end
local function outbox_add(outbox, hkey, event, object_id, now)
  if outbox_wants(hkey) then
    redis.call('ZADD', outbox, 'NX', now, event .. '|' .. object_id)
  end
end
"""

# ``batch_key(batch_prefix, bid)``: the one key name built inside Lua (see the module docstring);
# ``batch_prefix`` is ``Keys.batch("")``.
BATCH_KEY = """
local function batch_key(batch_prefix, bid)
  return batch_prefix .. bid
end
"""

# ``settle_batch_item(jobkey, batch_prefix, active, channel, outbox, status, now)``: count a batch item's
# end on its batch and, with its last item, end the batch: the one place a batch reaches a terminal
# state (``active``: ``Keys.active_batches``; ``channel``: ``Keys.batch_events_channel``). Needs OUTBOX
# and BATCH_KEY.
SETTLE = """
local function settle_batch_item(jobkey, batch_prefix, active, channel, outbox, status, now)
  local bid = redis.call('HGET', jobkey, 'batch_id')
  if not bid or bid == '' then return end
  local bkey = batch_key(batch_prefix, bid)
  if redis.call('EXISTS', bkey) == 0 then return end
  local field = 'failed'
  if status == 'succeeded' then field = 'completed' elseif status == 'canceled' then field = 'canceled'
  elseif status == 'expired' then field = 'expired' end
  redis.call('HINCRBY', bkey, field, 1)
  local b = redis.call('HMGET', bkey, 'completed', 'failed', 'canceled', 'total', 'status', 'cancel_requested',
    'expired', 'expires_at')
  local done = tonumber(b[1] or 0) + tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[7] or 0)
  if done >= tonumber(b[4] or 0) and b[5] ~= 'completed' and b[5] ~= 'canceled' and b[5] ~= 'failed'
      and b[5] ~= 'expired' then
    local final = 'completed'
    if b[6] == '1' then final = 'canceled'
    -- items ran out of the batch's completion window: the batch expired (items that ended before it keep
    -- their results; an item's own shorter deadline leaves the batch completed)
    elseif tonumber(b[7] or 0) > 0 and b[8] and tonumber(now) >= tonumber(b[8]) then final = 'expired' end
    redis.call('HSET', bkey, 'status', final, 'finished_at', now)
    redis.call('SREM', active, bid)
    redis.call('PUBLISH', channel, cjson.encode({id = bid, status = final}))
    outbox_add(outbox, bkey, 'batch.completed', bid, now)
  end
end
"""

# Everything a script that ends a job calls: release_pending, take_lease/drop_lease, outbox_add,
# batch_key and settle_batch_item.
JOB_END = RELEASE_PENDING + LEASE + OUTBOX + BATCH_KEY + SETTLE

# ``expire_job(job, tokens, deadlines, leases, outbox, active, batch_prefix, batch_channel, events, now,
# stream_ttl)``: end a queued job ``expired`` (its deadline passed before it started) as any terminal
# transition does: pending place, lease, stream end, event, batch counts, webhook outbox; and drop it
# from the deadlines set (``Keys.deadlines``). Needs JOB_END.
EXPIRE = """
local function expire_job(job, tokens, deadlines, leases, outbox, active, batch_prefix, batch_channel, events,
                          now, stream_ttl)
  local id = redis.call('HGET', job, 'id')
  redis.call('HSET', job, 'status', 'expired', 'finished_at', now, 'finish_reason', 'deadline', 'output', '',
    'error', cjson.encode({message = 'the job reached its deadline before a worker started it',
      type = 'deadline_exceeded'}))
  release_pending(job)
  drop_lease(job, leases)
  redis.call('ZREM', deadlines, id)
  redis.call('XADD', tokens, '*', 'end', 'expired')
  redis.call('EXPIRE', tokens, stream_ttl)
  redis.call('PUBLISH', events, cjson.encode({id = id, status = 'expired'}))
  settle_batch_item(job, batch_prefix, active, batch_channel, outbox, 'expired', now)
  outbox_add(outbox, job, 'job.completed', id, now)
end
"""

# What a script that may expire a job calls: JOB_END and expire_job.
JOB_EXPIRE = JOB_END + EXPIRE
