"""Handing back the items of a worker that died: no batch item is lost to a SIGKILL.

A killed worker's Celery messages come back only after the broker's visibility timeout (an
hour), so every worker checks, every ``batch_reap_seconds``, which batch items are held by a
worker whose heartbeat is gone (or that restarted since it took them): it puts each such job
back to ``queued`` and re-sends its message. Deleting the ledger entry first makes exactly one
worker re-send it; a message that comes back later finds the job claimed or done and does nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis

from textgen_core.batch_store import BatchLedger
from textgen_core.store import JobStore

log = logging.getLogger(__name__)


def live_workers(client: redis.Redis, pattern: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for key in client.scan_iter(match=pattern, count=100):
        raw = client.get(key)
        if raw:
            beat = json.loads(raw)
            out.append((beat["name"], float(beat["started_at"])))
    return out


def reap_once(ledger: BatchLedger, store: JobStore, client: redis.Redis,
              resend: Callable[[str, str, str], None]) -> int:
    handed_back = 0
    for batch_id, job_id, entry in ledger.orphans(live_workers(client, store.keys.workers_pattern())):
        if not ledger.release(batch_id, job_id, entry):
            continue  # another worker got there first, or the item just ended
        store.requeue(job_id)  # running -> queued; a queued job stays queued
        model = ledger.model_of(job_id)
        if model:
            resend(job_id, batch_id, model)
            handed_back += 1
    if handed_back:
        log.warning("handed back %d batch items held by workers that are gone", handed_back)
    return handed_back


def start_reaper(ledger: BatchLedger, store: JobStore, client: redis.Redis, period: float,
                 resend: Callable[[str, str, str], None], stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(period):
            try:
                reap_once(ledger, store, client, resend)
            except redis.RedisError as exc:
                log.warning("batch reaper: %s", exc)

    thread = threading.Thread(target=loop, name="textgen-batch-reaper", daemon=True)
    thread.start()
    return thread
