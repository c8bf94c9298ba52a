"""Taking back a job whose creation timed out: it was refused (503), but Redis may still run it.

A create sent to a Redis that hangs times out here, yet the command sits in Redis's socket
buffer and runs when Redis wakes up, leaving a queued record that no message will ever run and
a place under the key's queued-jobs cap. So the API withdraws such a job in the background until
Redis answers, then once more after it has surely drained what it held (the late create and an
early withdraw can run in either order).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from textgen_core.store import AsyncJobStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
GIVE_UP_SECONDS = 600.0

_tasks: set[asyncio.Task[None]] = set()  # held so the loop does not drop them half-way


def withdraw_later(store: AsyncJobStore, job_id: str) -> None:
    task = asyncio.create_task(_withdraw(store, job_id), name=f"withdraw-{job_id}")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _withdraw(store: AsyncJobStore, job_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GIVE_UP_SECONDS
    answered = 0
    while answered < 2 and loop.time() < deadline:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            await store.delete(job_id)
            answered += 1
        except RedisError:
            continue
    if answered < 2:
        log.warning("refused job %s not withdrawn: Redis did not answer", job_id, extra={"job_id": job_id})
