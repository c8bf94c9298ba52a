"""Batch accounting inside the job scripts: the one place a batch reaches a terminal state.

Every job script that ends a job (finish, cancel, give up after too many attempts) calls
``settle_batch_item`` in the same Lua call, so a batch's counts move exactly once per item and
the batch turns ``completed`` (or ``canceled``, or ``expired``) atomically with its last item. Anything that
must react to a finished batch subscribes to ``Keys.batch_events_channel``, published here and
nowhere else; ``batch.completed`` is recorded in the webhook outbox in the same call.
"""

from __future__ import annotations

from textgen_core.webhooks.outbox_lua import OUTBOX_LUA

# Key names are built from the prefix here; they must match Keys.batch, Keys.active_batches and
# Keys.batch_events_channel.
# Needs OUTBOX_LUA (included) for ``outbox_add``.
SETTLE_LUA = OUTBOX_LUA + """
local function settle_batch_item(jobkey, prefix, status, now)
  local bid = redis.call('HGET', jobkey, 'batch_id')
  if not bid or bid == '' then return end
  local bkey = prefix .. ':batch:' .. bid
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
    redis.call('SREM', prefix .. ':batches:active', bid)
    redis.call('PUBLISH', prefix .. ':batch-events', cjson.encode({id = bid, status = final}))
    outbox_add(prefix, bkey, 'batch.completed', bid, now)
  end
end
"""
