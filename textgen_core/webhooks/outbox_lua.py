"""The outbox's half of the terminal Lua scripts (kept free of imports: ``store`` and
``batch_settle`` include it). See ``textgen_core.webhooks.outbox``."""

# ``outbox_add(prefix, hkey, event, object_id, now)``: record ``event|object_id`` if the job or batch
# hash ``hkey`` has a webhook that wants completion. Key name as Keys.webhook_outbox; members as
# ``outbox.member``.
OUTBOX_LUA = """
local function outbox_wants(hkey)
  local hook = redis.call('HGET', hkey, 'webhook')
  if not hook or hook == '' then return false end
  local f = redis.call('HGET', hkey, 'webhook_events_filter')
  return not f or f == '' or f == 'null' or string.find(f, '"completed"', 1, true) ~= nil
end
local function outbox_add(prefix, hkey, event, object_id, now)
  if outbox_wants(hkey) then
    redis.call('ZADD', prefix .. ':webhook_outbox', 'NX', now, event .. '|' .. object_id)
  end
end
"""
