"""Leases: which worker holds which job, so the job of a worker that died runs again in seconds.

With the Redis broker, an unacknowledged message of a SIGKILLed worker comes back only after
the visibility timeout (an hour). So a worker takes a lease on a job when its task starts
(``hold``: a queued job, on either lane) and again when it claims it (the claim script, with the
attempt's token); its heartbeat renews the leases of the jobs it holds; the scripts that end a
job drop its lease. A lease that lapses means its holder is gone: one reaper (whichever runs the
reap script first) puts a running job back to ``queued`` and re-sends its message, and a
message that comes back later finds the job claimed or done and does nothing.

A lease is two things kept together by the scripts: the job id in the ``Keys.leases`` sorted set,
scored by expiry, and the holder's token in the job hash's ``lease`` field. The scripts are in
``textgen_core/scripts/leases.py`` (the job scripts use ``fragments.LEASE``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import redis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts import leases as lease_scripts


class Reaped(NamedTuple):
    job_id: str
    model: str
    lane: str
    batch_id: str  # "" for a job outside any batch


class JobLeases:
    """One worker process's leases: taken by its tasks, renewed by its heartbeat."""

    def __init__(self, client: redis.Redis, keys: Keys, *, lease_seconds: float, ttl: int):
        self.r = client
        self.keys = keys
        self.lease_seconds = lease_seconds
        self.ttl = ttl
        # token of one of this process's tasks -> its job id. Keyed by token, not job: a duplicate
        # message of a job (a re-send, a redelivery) run by this process must not replace, nor drop on
        # its way out, the entry of the task that holds the job, or that lease stops being renewed.
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._scripts = Scripts(client, lease_scripts.HOLD, lease_scripts.RENEW, lease_scripts.RELEASE,
                                lease_scripts.REAP)

    @contextmanager
    def holding(self, job_id: str) -> Iterator[str]:
        """Hold the job while the block runs; yields the token the attempt must claim with.

        If the block raises, the lease is not dropped but left to lapse: a job this process
        could not finish (Redis went away mid-job, say) is handed back by a reaper.
        """
        token = uuid.uuid4().hex
        with self._lock:
            self._held[token] = job_id
        try:
            self._scripts[lease_scripts.HOLD](keys=[self.keys.job(job_id), self.keys.leases],
                                      args=[token, time.time(), self.lease_seconds, self.ttl])
            yield token
        except BaseException:
            self._forget(job_id, token)
            raise
        self._forget(job_id, token)
        self._scripts[lease_scripts.RELEASE](keys=[self.keys.job(job_id), self.keys.leases], args=[token])

    def _forget(self, job_id: str, token: str) -> None:
        with self._lock:
            if self._held.get(token) == job_id:
                del self._held[token]

    @property
    def held(self) -> int:
        with self._lock:
            return len(set(self._held.values()))

    def renew(self) -> int:
        """Extend every lease this process still holds (called by the heartbeat)."""
        with self._lock:
            held = list(self._held.items())
        if not held:
            return 0
        expiry = time.time() + self.lease_seconds
        keys = [self.keys.leases, *(self.keys.job(job_id) for _, job_id in held)]
        args = [expiry, *(x for token, job_id in held for x in (job_id, token))]
        return int(self._scripts[lease_scripts.RENEW](keys=keys, args=args))

    def reap(self, limit: int = 100) -> list[Reaped]:
        """Take back up to ``limit`` jobs whose lease lapsed; the caller re-sends their messages.

        This process's own leases are renewed first: a lease that lapsed while Redis was away (a
        restart) must not cost the job an attempt when its holder is alive and reaping."""
        self.renew()
        now = time.time()
        out: list[Reaped] = []
        lapsed: list[str] = self.r.zrangebyscore(self.keys.leases, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        for job_id in lapsed:
            row = self._scripts[lease_scripts.REAP](keys=[self.keys.job(job_id), self.keys.leases],
                                      args=[job_id, now, self.lease_seconds])
            if row:
                out.append(Reaped(job_id, *row))
        return out
