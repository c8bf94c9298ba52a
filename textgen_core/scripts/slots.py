"""OpenAI request slot scripts (``api/slots.py``)."""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: slots. ARGV: now, lease expiry, member, limit, key ttl (s). Returns 1 if a slot was taken.
ACQUIRE = define("slots.acquire", """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
""")
