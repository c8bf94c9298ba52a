"""Long-poll without polling: one pub/sub subscription per API process wakes local waiters.

Workers publish ``{"id", "status"}`` on the events channel when a job ends. A waiter
registers, then reads the job (so an event that came before it registered is not missed),
then sleeps until its event or a slow re-check. A :class:`Watch` covers several jobs (a
completion's choices) and says which of them ended, so each is read once more, not all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator

import redis.asyncio as aioredis

from textgen_core.jobs import JobRecord

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0


def event_job_id(data: str | bytes) -> str | None:
    """The job id an event names, or None for anything else on the channel (it wakes no one)."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    job_id = event.get("id") if isinstance(event, dict) else None
    return job_id if isinstance(job_id, str) else None


class Watch:
    """Jobs one waiter follows: ``event`` is set when one of them may have ended, and ``take``
    says which (every one, after a reconnect in which events may have been missed)."""

    def __init__(self, job_ids: Iterable[str]):
        self.job_ids = list(job_ids)
        self.event = asyncio.Event()
        self._fired: set[str] = set()

    def fire(self, job_id: str | None = None) -> None:
        self._fired.update(self.job_ids if job_id is None else (job_id,))
        self.event.set()

    def take(self) -> set[str]:
        """The jobs that may have ended since the last call."""
        fired, self._fired = self._fired, set()
        self.event.clear()
        return fired


class EventHub:
    def __init__(self, client: aioredis.Redis, channel: str):
        self.client = client
        self.channel = channel
        self._waiters: dict[str, set[Watch]] = defaultdict(set)
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
                            self._wake(event_job_id(message["data"]) or "")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any: a dead listener would leave every waiter to its 5 s re-check
                log.warning("event listener reconnecting: %s", exc)
                await asyncio.sleep(1.0)

    def _wake(self, job_id: str) -> None:
        for watch in self._waiters.get(job_id, ()):
            watch.fire(job_id)

    def _wake_all(self) -> None:
        for watch in {w for watches in self._waiters.values() for w in watches}:
            watch.fire()

    @contextlib.contextmanager
    def watching(self, job_ids: Iterable[str]) -> Iterator[Watch]:
        """A :class:`Watch` of ``job_ids`` while the block runs. Read the jobs after entering it, so an
        event that came first is not missed."""
        watch = Watch(job_ids)
        for job_id in watch.job_ids:
            self._waiters[job_id].add(watch)
        try:
            yield watch
        finally:
            for job_id in watch.job_ids:
                self._waiters[job_id].discard(watch)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]

    async def wait(self, job_id: str, timeout: float,
                   read: Callable[[], Awaitable[JobRecord | None]]) -> JobRecord | None:
        """Return the job once it is terminal or ``timeout`` seconds pass."""
        with self.watching([job_id]) as watch:
            deadline = time.monotonic() + timeout
            while True:
                job = await read()
                remaining = deadline - time.monotonic()
                if job is None or job.status.terminal or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.event.wait(), min(remaining, RECHECK_SECONDS))
                watch.take()
