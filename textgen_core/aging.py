"""Aging on the broker: a message that waited long enough moves up to the list of its aged priority.

kombu's Redis transport takes a lane's better priority lists first and each list oldest first
(pushed on the left, popped on the right), so a steady stream of priority-0 jobs would hold a
priority-2 job back forever. Each worker, every few seconds, runs ``PROMOTE``
(``textgen_core/scripts/aging.py``) over the lists of the queues it serves: a list's oldest
message whose effective priority (``textgen_core/priorities.py``: one level better per
``priority_aging_seconds`` since its ``enqueued_at`` header) is better than its list's moves to
the right end of that better list, where it is the next message taken. The bound: a message of
priority p ranks first among new priority-0 work of its lane after ``p * priority_aging_seconds``
plus one promotion period; it is then taken as soon as the lane's older work before it is. Lanes
never mix: a bulk message moves only among the bulk lists, so aging never lets bulk work pass
interactive work.

The promotion moves a message between lists of one queue; its recorded priority stays, so a
message restored after a lost worker goes back to the list it was sent to and ages again.
"""

from __future__ import annotations

import redis

from textgen_core.keys import LANES, Keys
from textgen_core.priorities import ENQUEUED_AT_HEADER, LANE_STEP_BASE, lane_steps
from textgen_core.queues import step_list
from textgen_core.scripts import Scripts
from textgen_core.scripts.aging import PROMOTE


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
