"""Keeping the bulk lane from starving interactive jobs inside one worker process.

The worker has ``max_batch + interactive_headroom`` Celery slots per model. A bulk item enters
the engine only through :class:`BulkGate`, which admits ``max_batch`` at a time; a bulk task
waiting at the gate gives its slot back (re-sending its message to the bulk queue) as soon as
an interactive message is waiting, so interactive messages always find a free slot, and the
broker's priority order hands them out before the bulk backlog.
"""

from __future__ import annotations

import threading

import redis

from textgen_core.queues import priority_lists


class BulkGate:
    def __init__(self, client: redis.Redis, interactive_queue: str, slots: int, poll_s: float = 0.05):
        self.client = client
        self.interactive_queue = interactive_queue
        # Interactive messages of every priority wait on their own list (textgen_core/priorities.py).
        self._interactive_lists = priority_lists(interactive_queue)
        self.poll_s = poll_s
        self._slots = threading.BoundedSemaphore(slots)

    def enter(self) -> bool:
        """Wait for a bulk slot; False if interactive work is waiting (the caller must yield)."""
        while not self._slots.acquire(timeout=self.poll_s):
            try:
                if self.client.exists(*self._interactive_lists):
                    return False
            except redis.RedisError:
                pass
        return True

    def leave(self) -> None:
        self._slots.release()
