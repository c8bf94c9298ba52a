"""How many messages wait on each Celery queue, counted on Redis itself.

Celery's Redis transport keeps one list per queue and priority: ``<queue>`` for priority 0 and
``<queue>\\x06\\x16<n>`` for the others, so a queue's depth is the sum of those lists'
lengths. Counting every priority from 0 to 9 covers any ``priority_steps`` setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from textgen_core.keys import LANES, Keys

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITIES = range(10)


@dataclass(frozen=True)
class QueueRef:
    model: str
    lane: str
    name: str


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITIES if p]


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

