"""Batch chunk dispatch scripts: take a chunk over, reap a lapsed one (``textgen_core/dispatch.py``)."""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: dispatch set, active batches, re-sends. ARGV: member, batch id, new deadline. The dispatch
# task takes the chunk over: 1 if its entry is there and its batch active (deadline moved on, the
# re-send count reset), else 0 (already dispatched by another copy, or the batch ended: dropped).
TAKE = define("dispatch.take", """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
""")

# KEYS: dispatch set, active batches, re-sends. ARGV: member, batch id, now, lease seconds, ttl. If
# the chunk's deadline passed: drop it if its batch ended (0), else push the deadline on (so a lost
# re-send is reaped again) and return 1 for the caller to re-send. The n-th re-send since the chunk
# was last taken over waits 2^(n-1) leases (at most 64): a message that is only waiting its turn in
# a long queue is not copied every lease. One script call, so exactly one reaper wins.
REAP = define("dispatch.reap", """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[3]) then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 0
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
local wait = tonumber(ARGV[4]) * 2 ^ math.min(n - 1, 6)
redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[3]) + wait, ARGV[1])
return 1
""")
