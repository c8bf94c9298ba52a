"""Deadlines: a job (or batch item, or response) not started by its ``deadline_at`` ends ``expired``
without running; one running when it passes stops at the next engine step, keeping its text so far.

Three things enforce it, so no single one has to be on time:

- the claim script refuses a job whose deadline passed (atomically, in the claim itself);
- every worker sweeps the ``Keys.deadlines`` sorted set (job id -> deadline) about once a second
  (``settings.deadline_sweep_seconds``) and expires the queued jobs that came due, so a job reaches
  ``expired`` within a second or two of its deadline even while every worker is busy generating;
- the executor arms a timer for a job it runs, which cancels the job's row at its deadline; the job
  then ends ``expired`` with ``finish_reason: "deadline"``.

Durations are written as Replicate's ``Cancel-After`` header writes them (``30s``, ``5m``, ``1h``,
``1h30m``, or plain seconds) and OpenAI's batch ``completion_window`` (``24h``).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.keys import Keys
from textgen_core.scripts import Scripts
from textgen_core.scripts.deadlines import EXPIRE_DUE

if TYPE_CHECKING:
    from textgen_core.jobs import JobRecord

MAX_DEADLINE_SECONDS = 7 * 24 * 3600  # no deadline outlives the job record's default TTL
FINISH_REASON = "deadline"  # the finish_reason of a job that its deadline stopped

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits only: ``\d`` would take other scripts' digits (``٢٤h``), which float() reads as numbers.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_duration(text: str, *, maximum: float = MAX_DEADLINE_SECONDS) -> float:
    """Seconds in ``text``: ``30s``, ``5m``, ``1h``, ``1h30m``, ``250ms``, ``2d`` or plain seconds (``45``,
    ``2.5``). Raises ValueError, with a message fit for a client, for anything else, for zero, and for
    more than ``maximum``."""
    value = text.strip().lower()
    if _PLAIN.fullmatch(value):
        seconds = float(value)
    else:
        parts = _PART.findall(value)
        if not value or not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration: write it like '30s', '5m', '1h', '1h30m' or as "
                             "plain seconds")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than zero")
    if seconds > maximum:
        raise ValueError(f"{text!r} is longer than the most allowed, {int(maximum)} seconds")
    return seconds


def earliest(*seconds: float | None) -> float | None:
    """The shortest of the durations given (a header and a body field may both set one)."""
    given = [s for s in seconds if s is not None]
    return min(given) if given else None


def stopped_by_deadline(job: JobRecord, now: float | None = None) -> bool:
    """Whether ``job``'s deadline has passed (its row was canceled by the deadline, not by a client)."""
    return job.deadline_at is not None and (now or time.time()) >= job.deadline_at


@contextmanager
def deadline_timer(job: JobRecord, engine: Any) -> Iterator[None]:
    """While the block runs, cancel ``job``'s row in ``engine`` when its deadline passes (the engine's
    cancel path: the row stops at its next step and returns the text so far)."""
    if job.deadline_at is None:
        yield
        return
    timer = threading.Timer(max(0.0, job.deadline_at - time.time()), engine.cancel, args=(job.id,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def deadline_at(created_at: float, seconds: float | None) -> float | None:
    return None if seconds is None else created_at + seconds


def track(pipe: redis.client.Pipeline | aioredis.client.Pipeline, keys: Keys, deadlines: dict[str, float],
          ttl: int) -> None:
    """Queue the commands that put jobs' deadlines in the sweep set on ``pipe`` (the caller executes)."""
    if deadlines:
        pipe.zadd(keys.deadlines, deadlines)
        pipe.expire(keys.deadlines, ttl)


class Expired(NamedTuple):
    job_id: str
    model: str
    lane: str


class DeadlineSweeper:
    """Worker side: expire the queued jobs whose deadline came due (any worker may run it; the script
    decides each job once)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, stream_ttl: int, recheck_seconds: float = 5.0):
        self.r = client
        self.keys = keys
        self.stream_ttl = stream_ttl
        self.recheck_seconds = recheck_seconds
        self._scripts = Scripts(client, EXPIRE_DUE)

    def sweep(self, limit: int = 200) -> list[Expired]:
        now = time.time()
        due: list[str] = self.r.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        out: list[Expired] = []
        for job_id in due:
            outcome = self._scripts[EXPIRE_DUE](
                keys=[self.keys.job(job_id), self.keys.tokens(job_id), self.keys.deadlines, self.keys.leases,
                      self.keys.webhook_outbox, self.keys.active_batches],
                args=[job_id, now, self.keys.events_channel, self.stream_ttl, self.recheck_seconds,
                      self.keys.batch(""), self.keys.batch_events_channel])
            if outcome == "expired":
                model, lane = self.r.hmget(self.keys.job(job_id), ["model", "lane"])  # type: ignore[misc]
                out.append(Expired(job_id, model or "", lane or "interactive"))
        return out
