"""Aging on the broker: a message that waited long enough moves up to the list of its aged priority.

kombu's Redis transport takes a lane's better priority lists first and each list oldest first
(pushed on the left, popped on the right), so a steady stream of priority-0 jobs would hold a
priority-2 job back forever. Each worker, every few seconds, runs :data:`PROMOTE` over the lists
of the queues it serves: a list's oldest message whose effective priority
(``textgen_core/priorities.py``: one level better per ``priority_aging_seconds`` since its
``enqueued_at`` header) is better than its list's moves to the right end of that better list,
where it is the next message taken. The bound: a message of priority p ranks first among new
priority-0 work of its lane after ``p * priority_aging_seconds`` plus one promotion period; it is
then taken as soon as the lane's older work before it is. Lanes never mix: a bulk message moves
only among the bulk lists, so aging never lets bulk work pass interactive work.

The promotion moves a message between lists of one queue; its recorded priority stays, so a
message restored after a lost worker goes back to the list it was sent to and ages again.
"""

from __future__ import annotations

import redis

from textgen_core.keys import LANES, Keys
from textgen_core.priorities import ENQUEUED_AT_HEADER, LANE_STEP_BASE, lane_steps
from textgen_core.queues import step_list
from textgen_core.scripts import Scripts, define

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


def lane_lists(keys: Keys, model: str, lane: str) -> list[str]:
    """The Redis lists of one model's lane, best priority first."""
    return [step_list(keys.queue(model, lane), step) for step in lane_steps(lane)]


class BrokerAging:
    """Promotes the aged messages of the queues one worker serves."""

    def __init__(self, client: redis.Redis, keys: Keys, models: list[str], aging_s: float, most: int = 1000):
        self.client = client
        self.keys = keys
        self.models = models
        self.aging_s = aging_s
        self.most = most
        self._scripts = Scripts(client, PROMOTE)

    def promote(self, now: float) -> int:
        """One pass over every served lane; how many messages moved up."""
        moved = 0
        for model in self.models:
            for lane in LANES:
                moved += int(self._scripts[PROMOTE](
                    keys=lane_lists(self.keys, model, lane),
                    args=[now, self.aging_s, self.most, LANE_STEP_BASE[lane], ENQUEUED_AT_HEADER]))
        return moved
