"""Batch items whose message the broker lost: found once their model's bulk lists are empty, and re-sent.

kombu's Redis transport takes a message off its list (BRPOP) and records it as unacked in a second
call; a worker SIGKILLed between the two loses that message, and its item stays ``queued`` with no
lease, so neither the lease reaper nor the broker's visibility timeout ever brings it back. Every
worker's reaper therefore looks, for each active batch of a model it serves whose bulk lists are
empty (nothing waits on the broker, so every unfinished item is running, held by a live worker a
moment before it claims it, or lost), for items that are ``queued`` without a lease, and re-sends
those it saw so on its previous pass too (the second look leaves the moment between a live
worker's take and its claim out). A re-sent item whose first message turns up after all (restored
from ``unacked``) is claimed once: the claim is atomic, the copy does nothing. The scan reads a
batch's item ids only while its queue is drained, which is also when few of them are unfinished.
"""

from __future__ import annotations

import redis

from textgen_core.keys import Keys
from textgen_core.leases import Reaped
from textgen_core.priorities import lane_steps
from textgen_core.queues import step_list

_ENDED = {"completed", "canceled", "failed", "expired"}


class OrphanItems:
    """One worker's view of the batch items nobody holds (see the module's docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys, models: list[str]):
        self.r = client
        self.keys = keys
        self.models = set(models)
        self._seen: set[str] = set()

    def _drained(self, model: str) -> bool:
        queue = self.keys.queue(model, "bulk")
        lists = [step_list(queue, step) for step in lane_steps("bulk")]
        with self.r.pipeline(transaction=False) as pipe:
            for name in lists:
                pipe.llen(name)
            return not any(int(n) for n in pipe.execute())

    def find(self) -> list[Reaped]:
        """The items to re-send now (queued without a lease on two passes in a row)."""
        candidates: list[Reaped] = []
        for batch_id in sorted(self.r.smembers(self.keys.active_batches)):  # type: ignore[arg-type]
            model, status = self.r.hmget(self.keys.batch(batch_id), ["model", "status"])  # type: ignore[misc]
            if model not in self.models or status in _ENDED or status == "validating" or not self._drained(model):
                continue
            if any(m.startswith(f"{batch_id}|") for m in self.r.zrange(self.keys.dispatch, 0, -1)):  # type: ignore[union-attr]
                continue  # a chunk of it is still being sent
            ids: list[str] = self.r.lrange(self.keys.batch_jobs(batch_id), 0, -1)  # type: ignore[assignment]
            with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self.keys.job(job_id), ["status", "lease"])
                states = pipe.execute()
            candidates += [Reaped(job_id, model, "bulk", batch_id)
                           for job_id, (st, lease) in zip(ids, states, strict=True) if st == "queued" and not lease]
        now = {c.job_id for c in candidates}
        due = [c for c in candidates if c.job_id in self._seen]
        self._seen = now - {c.job_id for c in due}
        return due
