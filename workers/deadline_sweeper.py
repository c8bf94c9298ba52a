"""Expiring queued jobs whose deadline passed, on a thread of its own in every worker.

A queued job waits behind others on its Celery queue; when every worker is busy its message may
not be taken for minutes. This loop (every ``settings.deadline_sweep_seconds``) ends such a job
``expired`` in Redis in the meantime, with its webhook, history-free end and batch counts as any
terminal transition has them; its message, taken later, finds the job ended and does nothing.
Every worker runs it; the script decides each job once (``textgen_core/deadlines.py``).
"""

from __future__ import annotations

import logging
import threading

import redis

from textgen_core import metrics
from textgen_core.deadlines import DeadlineSweeper
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def sweep_once(rt: Runtime, sweeper: DeadlineSweeper) -> int:
    expired = sweeper.sweep()
    for job in expired:
        metrics.JOBS_FINISHED.labels(job.model, rt.store.keys.queue(job.model, job.lane), "expired").inc()
        if rt.store.on_terminal is not None:
            try:
                rt.store.on_terminal(job.job_id)  # webhooks, as for any job that ended
            except Exception:  # the outbox holds the event: its sweeper sends it if this did not
                log.exception("on_terminal hook failed for %s", job.job_id)
    if expired:
        log.info("expired %d queued jobs past their deadline: %s", len(expired),
                 ", ".join(j.job_id for j in expired), extra={"job_ids": [j.job_id for j in expired]})
    return len(expired)


def start_deadline_sweeper(rt: Runtime) -> threading.Thread:
    sweeper = DeadlineSweeper(rt.client, rt.store.keys, stream_ttl=rt.settings.stream_ttl_seconds,
                              recheck_seconds=rt.settings.lease_reap_seconds)

    def loop() -> None:
        while not rt._stop.wait(rt.settings.deadline_sweep_seconds):
            try:
                sweep_once(rt, sweeper)
            except redis.RedisError as exc:
                log.warning("deadline sweeper: %s", exc)
            except Exception:  # one bad record must not stop the loop that expires every other job
                log.exception("deadline sweeper failed")

    thread = threading.Thread(target=loop, name="textgen-deadline-sweeper", daemon=True)
    thread.start()
    return thread
