"""Webhook outbox scripts (``textgen_core/webhook_events/outbox.py``); entries are added by the job
scripts (``fragments.OUTBOX``).

An entry's score is when it was recorded, or, once someone took it, a time in the future: it is
leased to the taker until then. Whoever takes an entry queues its event and removes it; if the
taker dies, the entry is due again a grace period after its lease ends.
"""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: outbox. ARGV: entry, now, lease end. Takes a fresh entry (not leased): the process that
# ended the object, or one of the concurrent items of a batch, takes it once. Returns 1 if taken.
TAKE = define("outbox.take", """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
""")

# KEYS: outbox. ARGV: due before, limit, lease end. Takes the entries left behind (the sweeper);
# returns them.
LEASE = define("outbox.lease", """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], m) end
return due
""")
