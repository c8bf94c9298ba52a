"""How many messages wait on each Celery queue, counted on Redis itself.

Celery's Redis transport keeps one list per queue and priority: ``<queue>`` for priority 0 and
``<queue>\\x06\\x16<n>`` for the others, so a queue's depth is the sum of those lists'
lengths. Counting every priority from 0 to 9 covers any ``priority_steps`` setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from textgen_core.keys import LANES, Keys
from textgen_core.priorities import ENQUEUED_AT_HEADER, lane_steps

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITIES = range(10)


@dataclass(frozen=True)
class QueueRef:
    model: str
    lane: str
    name: str


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority."""
    return [step_list(queue, p) for p in PRIORITIES]


def step_list(queue: str, step: int) -> str:
    """The Redis list of ``queue``'s messages at one broker priority step."""
    return f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue


def model_queues(keys: Keys, model_ids: list[str]) -> list[QueueRef]:
    return [QueueRef(m, lane, keys.queue(m, lane)) for m in model_ids for lane in LANES]


def _sum_by_queue(queues: list[QueueRef], lengths: list[int]) -> dict[QueueRef, int]:
    per = len(PRIORITIES)
    return {q: sum(int(n) for n in lengths[i * per:(i + 1) * per]) for i, q in enumerate(queues)}


async def queue_depths(client: aioredis.Redis, queues: list[QueueRef]) -> dict[QueueRef, int]:
    """Messages waiting per queue (not yet taken by a worker), in one round trip."""
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            for name in priority_lists(q.name):
                pipe.llen(name)
        lengths = await pipe.execute()
    return _sum_by_queue(queues, lengths)



@dataclass(frozen=True)
class Backlog:
    """One lane's messages at one priority: how many wait, and for how long the oldest has."""

    queue: QueueRef
    priority: int
    depth: int
    oldest_age_seconds: float


def enqueued_at(raw: str | None) -> float | None:
    """The ``enqueued_at`` header of a raw kombu message (None: no message, or no header)."""
    if not raw:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(ENQUEUED_AT_HEADER)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


async def priority_backlog(client: aioredis.Redis, queues: list[QueueRef], now: float) -> list[Backlog]:
    """Per queue and priority, the messages waiting and the age of the oldest (the autoscaling signals),
    in one round trip. A list's oldest message is its right end, the next one taken; aging
    (``textgen_core/aging.py``) moves a message to a better list, where it counts from then on."""
    lists = [(q, level, step_list(q.name, step)) for q in queues for level, step in enumerate(lane_steps(q.lane))]
    async with client.pipeline(transaction=False) as pipe:
        for _, _, name in lists:
            pipe.llen(name)
            pipe.lindex(name, -1)
        replies = await pipe.execute()
    out = []
    for i, (q, level, _) in enumerate(lists):
        depth, oldest = int(replies[2 * i]), enqueued_at(replies[2 * i + 1])
        age = max(0.0, now - oldest) if depth and oldest is not None else 0.0
        out.append(Backlog(q, level, depth, age))
    return out
