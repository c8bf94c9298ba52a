"""Long-poll without polling: one pub/sub subscription per API process wakes local waiters.

Workers publish ``{"id", "status"}`` on the events channel when a job ends. A waiter
registers, then reads the job (so an event that came before it registered is not missed),
then sleeps until its event or a slow re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from textgen_core.jobs import JobRecord

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0


class EventHub:
    def __init__(self, client: aioredis.Redis, channel: str):
        self.client = client
        self.channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="textgen-events")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._wake_all()  # events may have been missed while disconnected
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(json.loads(message["data"]).get("id", ""))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                log.warning("event listener reconnecting: %s", exc)
                await asyncio.sleep(1.0)

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def wait(self, job_id: str, timeout: float,
                   read: Callable[[], Awaitable[JobRecord | None]]) -> JobRecord | None:
        """Return the job once it is terminal or ``timeout`` seconds pass."""
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        try:
            deadline = time.monotonic() + timeout
            while True:
                job = await read()
                remaining = deadline - time.monotonic()
                if job is None or job.status.terminal or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, RECHECK_SECONDS))
                event.clear()
        finally:
            self._waiters[job_id].discard(event)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
