"""Job lease scripts: hold, renew, release, reap (``textgen_core/leases.py``)."""

from __future__ import annotations

from textgen_core.scripts import define
from textgen_core.scripts.fragments import LEASE

# KEYS: job, leases. ARGV: token, now, lease seconds, leases ttl. Holds a queued job unless a live
# lease of another task holds it (a running job is held by the attempt that claimed it; a job the
# reaper re-sent has a live lease with no holder, for the task of the re-sent message to take).
HOLD = define("lease.hold", LEASE + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local now = tonumber(ARGV[2])
local current = redis.call('HGET', KEYS[1], 'lease')
if current and current ~= '' then
  local expiry = redis.call('ZSCORE', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
  if expiry and tonumber(expiry) > now then return 0 end
end
take_lease(KEYS[1], KEYS[2], ARGV[1], now + tonumber(ARGV[3]), ARGV[4])
return 1
""")

# KEYS: leases, then one job hash per lease. ARGV: new expiry, then job id and token pairs, the i-th
# pair for KEYS[i + 1]. Extends only leases still ours; returns how many.
RENEW = define("lease.renew", """
local n = 0
for i = 2, #KEYS do
  local id, token = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if redis.call('HGET', KEYS[i], 'lease') == token then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], id)
  end
end
return n
""")

# KEYS: job, leases. ARGV: token. Drops the lease if it is still ours, except on a job our attempt
# claimed and did not finish (a Redis error on the way, say): that lease is left to lapse, so a
# reaper hands the job back. Returns 1 if it dropped it.
RELEASE = define("lease.release", LEASE + """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'attempt_token') == ARGV[1]
  then return 0 end
drop_lease(KEYS[1], KEYS[2])
return 1
""")

# KEYS: job, leases. ARGV: job id, now, lease seconds. If the job's lease lapsed: put a running job
# back to queued, re-arm the lease with no holder (so if the re-send is lost, it lapses and is
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
