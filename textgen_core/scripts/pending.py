"""Pending-count scripts: the per-key count of accepted jobs that have not finished, kept exact inside Redis.

Admission and the count change in one script, and every script that moves a job to a
terminal state releases it in the same atomic step, so the count never drifts with crashes or
races. The job hash remembers its counter in the ``pending_key`` field; releasing deletes that
field, so a job is released at most once whichever script ends it.

A batch counts as its items: ``RESERVE`` takes places for all of them at once (or none), each
item record then carries ``pending_key`` like a job's, and each releases its own place when it
ends. Places a batch reserved but never wrote (its acceptance failed) go back with ``UNRESERVE``.
Ending scripts release a job's place with ``fragments.RELEASE_PENDING``.
"""

from __future__ import annotations

from textgen_core.scripts import define
from textgen_core.scripts.fragments import RELEASE_PENDING

# KEYS: counter, job. ARGV: cap (0 = none), counter ttl, job ttl, then the job's field/value pairs.
# Returns {1, count} when the job was stored, {0, count} when the owner is at the cap.
ADMIT = define("pending.admit", """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local cap = tonumber(ARGV[1])
if cap > 0 and count >= cap then return {0, count} end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('HSET', KEYS[2], 'pending_key', KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, count}
""")

# KEYS: counter. ARGV: cap (0 = none), places, counter ttl. Returns {1, count} when all the places
# were taken, {0, count} when they would take the owner past the cap.
RESERVE = define("pending.reserve", """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local cap = tonumber(ARGV[1])
if cap > 0 and count + tonumber(ARGV[2]) > cap then return {0, count} end
count = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, count}
""")

# KEYS: counter. ARGV: places. Gives back places reserved for records that were never written;
# returns the count afterwards.
UNRESERVE = define("pending.unreserve", """
if tonumber(ARGV[1]) <= 0 then return tonumber(redis.call('GET', KEYS[1]) or '0') end
local count = redis.call('DECRBY', KEYS[1], ARGV[1])
if count <= 0 then redis.call('DEL', KEYS[1]) end
return math.max(count, 0)
""")

# KEYS: job, tokens stream. ARGV: none. Takes back a job that was stored but could not be enqueued,
# with its place under the cap; returns how many keys went.
WITHDRAW = define("pending.withdraw", RELEASE_PENDING + """
release_pending(KEYS[1])
return redis.call('DEL', KEYS[1], KEYS[2])
""")
