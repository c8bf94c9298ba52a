"""Batch scripts: start and request cancel (``textgen_core/batch_store.py``). A batch's end is
settled by the job scripts (``fragments.SETTLE``)."""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: batch, active batches. ARGV: batch id. Every item is written and enqueued: validating ->
# in_progress (a cancel or the last item may have moved it on already: only validating moves);
# an ended batch leaves the active set. Returns the status afterwards.
START = define("batch.start", """
if redis.call('HGET', KEYS[1], 'status') == 'validating' then redis.call('HSET', KEYS[1], 'status', 'in_progress') end
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'completed' or s == 'canceled' or s == 'failed' or s == 'expired' then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return s
""")

# KEYS: batch. ARGV: now. A validating or in-progress batch becomes cancelling; returns its status before.
REQUEST_CANCEL = define("batch.request_cancel", """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'validating' or s == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancel_requested', '1', 'cancelling_at', ARGV[1])
end
return s
""")
