"""Taking back a job or batch refused with a 503 because Redis went away while it was written.

A create sent to a Redis that hangs times out here, yet the command sits in Redis's socket
buffer and runs when Redis wakes up, leaving a queued record that no message will ever run and
a place under the key's queued-jobs cap. So the API withdraws such a job in the background until
Redis answers, then once more after it has surely drained what it held (the late create and an
early withdraw can run in either order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from textgen_core.batch_store import AsyncBatchStore
from textgen_core.store import AsyncJobStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
GIVE_UP_SECONDS = 600.0

_tasks: set[asyncio.Task[None]] = set()  # held so the loop does not drop them half-way


def withdraw_later(store: AsyncJobStore, job_id: str) -> None:
    _retry_later(f"withdraw-{job_id}", lambda: store.delete(job_id), f"refused job {job_id}", passes=2)


def remove_batch_later(store: AsyncBatchStore, batch_id: str, owner: str, unwritten: int) -> None:
    """A batch refused with a 503 because Redis went away while its items were written: remove it
    once Redis answers again (its dispatch messages then find it inactive and send nothing). Once:
    giving its reserved places back twice would free places other batches hold."""
    _retry_later(f"remove-{batch_id}", lambda: store.delete(batch_id, owner, unwritten=unwritten),
                 f"refused batch {batch_id}", passes=1)


def _retry_later(name: str, attempt: Callable[[], Awaitable[object]], what: str, *, passes: int) -> None:
    task = asyncio.create_task(_retry(attempt, what, passes), name=name)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _retry(attempt: Callable[[], Awaitable[object]], what: str, passes: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GIVE_UP_SECONDS
    answered = 0
    while answered < passes and loop.time() < deadline:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            await attempt()
            answered += 1
        except RedisError:
            continue
    if answered < passes:
        log.warning("%s not withdrawn: Redis did not answer", what)
