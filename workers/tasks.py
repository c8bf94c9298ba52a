"""Celery tasks: thin wrappers over ``textgen_core`` (serialization, acks, nothing else)."""

from __future__ import annotations

import time

from textgen_core.dispatch import Chunk
from textgen_core.jobs import JobStatus
from textgen_core.keys import BATCH_DISPATCH_TASK, BATCH_ITEM_TASK, GENERATE_TASK, Keys
from textgen_core.leases import Reaped
from textgen_core.priorities import DEFAULT_PRIORITY, send_options
from workers.app import app
from workers.runtime import runtime


@app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(job_id: str) -> str | None:
    rt = runtime()
    with rt.leases.holding(job_id) as token:
        status = rt.executor.run(job_id, attempt_token=token)
    return status.value if status else None


def _priority_of(key: str) -> int:
    """The priority stored on a job or batch record (1 when it has none)."""
    return int(runtime().client.hget(key, "priority") or DEFAULT_PRIORITY)  # type: ignore[arg-type]


def resend(job: Reaped) -> None:
    """Send a reaped job's message again, on the lane and at the priority it came with."""
    if job.batch_id:
        send_item(job.job_id, job.batch_id, job.model)
    else:
        keys = Keys(runtime().settings.key_prefix)
        app.send_task(GENERATE_TASK, args=[job.job_id], queue=keys.queue(job.model, job.lane), task_id=job.job_id,
                      **send_options(job.lane, _priority_of(keys.job(job.job_id))))


def send_item(job_id: str, batch_id: str, model: str) -> None:
    keys = Keys(runtime().settings.key_prefix)
    app.send_task(BATCH_ITEM_TASK, args=[job_id, batch_id, model], queue=keys.queue(model, "bulk"), task_id=job_id,
                  **send_options("bulk", _priority_of(keys.job(job_id))))


@app.task(name=BATCH_DISPATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_dispatch(batch_id: str, model: str, start: int, stop: int) -> int:
    """Enqueue one chunk of a batch's items on the bulk lane, holding the chunk's lease while it
    sends (``textgen_core/dispatch.py``): a copy of a chunk already dispatched, or of an ended
    batch, does nothing; a chunk half sent when this worker died is sent again by a reaper."""
    rt = runtime()
    chunk = Chunk(batch_id, model, start, stop)
    if not rt.chunks.take(chunk):
        return 0
    try:
        ids = rt.ledger.job_ids(batch_id, start, stop)
        delay = rt.settings.test_dispatch_item_delay_seconds
        keys = Keys(rt.settings.key_prefix)
        priority = _priority_of(keys.batch(batch_id))
        with app.producer_or_acquire() as producer:
            queue = keys.queue(model, "bulk")
            for job_id in ids:
                if delay:
                    time.sleep(delay)
                app.send_task(BATCH_ITEM_TASK, args=[job_id, batch_id, model], queue=queue, task_id=job_id,
                              producer=producer, **send_options("bulk", priority))
    except BaseException:
        rt.chunks.forget()  # left to lapse: a reaper sends the chunk again
        raise
    rt.chunks.done(chunk)
    return len(ids)


def resend_chunk(chunk: Chunk) -> None:
    """Send a reaped chunk's dispatch message again."""
    keys = Keys(runtime().settings.key_prefix)
    app.send_task(BATCH_DISPATCH_TASK, args=list(chunk), queue=keys.queue(chunk.model, "bulk"),
                  **send_options("bulk", _priority_of(keys.batch(chunk.batch_id))))


@app.task(name=BATCH_ITEM_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_item(job_id: str, batch_id: str, model: str) -> str | None:
    rt = runtime()
    with rt.leases.holding(job_id) as token:  # held while it waits at the gate too
        gate = rt.gates.get(model)
        if gate is not None and not gate.enter():
            send_item(job_id, batch_id, model)  # interactive work is waiting: give the slot back
            return "yielded"
        try:
            status = rt.executor.run(job_id, attempt_token=token, may_hand_back=True)
        finally:
            if gate is not None:
                gate.leave()
        if status is JobStatus.queued:  # an identical item is generating: meet its result next time round
            send_item(job_id, batch_id, model)
            return "handed back"
    return status.value if status else None
