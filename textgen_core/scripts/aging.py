"""Broker aging: a waiting message moves up to the list of its aged priority (``textgen_core/aging.py``)."""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: one queue's lists of one lane, best priority first. ARGV: now, aging seconds, most moves, the
# lane's first broker step, the enqueued-at header name. From the worst list up, while a list's oldest
# message (its right end) is due a better list, move it to the right end of the list of its effective
# priority (its own priority, from the step it was sent with, less one per aging period waited). Stops
# at a message without the header or not yet due (those behind it are younger). Returns messages moved.
PROMOTE = define("aging.promote", """
local now, aging, most, base = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local moved = 0
for level = #KEYS - 1, 1, -1 do
  while moved < most do
    local raw = redis.call('LINDEX', KEYS[level + 1], -1)
    if not raw then break end
    local ok, msg = pcall(cjson.decode, raw)
    if not ok or type(msg) ~= 'table' or type(msg.headers) ~= 'table' or type(msg.properties) ~= 'table' then
      break
    end
    local at, step = tonumber(msg.headers[ARGV[5]]), tonumber(msg.properties.priority)
    if not at or not step then break end
    local target = math.max(0, step - base - math.floor((now - at) / aging))
    if target >= level then break end
    redis.call('RPUSH', KEYS[target + 1], redis.call('RPOP', KEYS[level + 1]))
    moved = moved + 1
  end
end
return moved
""")
