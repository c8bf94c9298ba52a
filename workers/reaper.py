"""Handing back the jobs of a worker that died: no job is lost to a SIGKILL, on either lane.

Every worker, every ``lease_reap_seconds``, runs the reap script over the jobs whose lease
lapsed (``textgen_core/leases.py``): the script puts a running job back to ``queued`` and the
worker that won it re-sends its message (interactive: ``textgen.generate``; batch items:
``textgen.batch_item``). The script drops the lease first, so exactly one worker re-sends; the
dead worker's own message, redelivered after the broker's visibility timeout, finds the job
claimed or done and does nothing.

The same loop re-sends the ``textgen.batch_dispatch`` message of a batch chunk whose deadline
passed (its dispatcher died before it sent every item message; ``textgen_core/dispatch.py``), and
the message of a batch item the broker lost between a worker's take and its record of it
(``textgen_core/orphans.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from textgen_core.dispatch import Chunk, ChunkLeases
from textgen_core.leases import JobLeases, Reaped
from textgen_core.orphans import OrphanItems

log = logging.getLogger(__name__)


def reap_once(leases: JobLeases, resend: Callable[[Reaped], None]) -> int:
    reaped = leases.reap()
    for job in reaped:
        resend(job)
    if reaped:
        log.warning("handed back %d jobs whose worker is gone: %s", len(reaped), ", ".join(j.job_id for j in reaped),
                    extra={"job_ids": [j.job_id for j in reaped]})
    return len(reaped)


def reap_chunks_once(chunks: ChunkLeases, resend: Callable[[Chunk], None]) -> int:
    reaped = chunks.reap()
    for chunk in reaped:
        resend(chunk)
    if reaped:
        log.warning("re-sent %d batch chunks whose dispatcher is gone: %s", len(reaped),
                    ", ".join(chunk.member for chunk in reaped))
    return len(reaped)


def resend_orphans_once(orphans: OrphanItems, resend: Callable[[Reaped], None]) -> int:
    found = orphans.find()
    for item in found:
        resend(item)
    if found:
        log.warning("re-sent %d batch items whose message the broker lost: %s", len(found),
                    ", ".join(i.job_id for i in found), extra={"job_ids": [i.job_id for i in found]})
    return len(found)


def start_reaper(leases: JobLeases, chunks: ChunkLeases, orphans: OrphanItems, period: float,
                 resend: Callable[[Reaped], None], resend_chunk: Callable[[Chunk], None],
                 stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(period):
            try:
                reap_once(leases, resend)
                reap_chunks_once(chunks, resend_chunk)
                resend_orphans_once(orphans, resend)
            except redis.RedisError as exc:
                log.warning("lease reaper: %s", exc)
            except Exception:  # a bad record must not end the loop that saves every other job
                log.exception("lease reaper failed")

    thread = threading.Thread(target=loop, name="textgen-lease-reaper", daemon=True)
    thread.start()
    return thread
