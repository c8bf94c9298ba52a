"""Celery tasks: thin wrappers over ``textgen_core`` (serialization, acks, nothing else)."""

from __future__ import annotations

from textgen_core.jobs import JobStatus
from textgen_core.keys import BATCH_DISPATCH_TASK, BATCH_ITEM_TASK, GENERATE_TASK, Keys
from textgen_core.leases import Reaped
from workers.app import app
from workers.runtime import runtime


@app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(job_id: str) -> str | None:
    rt = runtime()
    with rt.leases.holding(job_id) as token:
        status = rt.executor.run(job_id, attempt_token=token)
    return status.value if status else None


def resend(job: Reaped) -> None:
    """Send a reaped job's message again, on the lane it came from."""
    if job.batch_id:
        send_item(job.job_id, job.batch_id, job.model)
    else:
        queue = Keys(runtime().settings.key_prefix).queue(job.model, job.lane)
        app.send_task(GENERATE_TASK, args=[job.job_id], queue=queue, task_id=job.job_id)


def send_item(job_id: str, batch_id: str, model: str) -> None:
    queue = Keys(runtime().settings.key_prefix).queue(model, "bulk")
    app.send_task(BATCH_ITEM_TASK, args=[job_id, batch_id, model], queue=queue, task_id=job_id)


@app.task(name=BATCH_DISPATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_dispatch(batch_id: str, model: str, start: int, stop: int) -> int:
    """Enqueue one chunk of a batch's items on the bulk lane. A redelivered chunk re-sends its
    items; their jobs are claimed once, so duplicates do nothing."""
    rt = runtime()
    if not rt.ledger.is_active(batch_id):
        return 0
    ids = rt.ledger.job_ids(batch_id, start, stop)
    with app.producer_or_acquire() as producer:
        queue = Keys(rt.settings.key_prefix).queue(model, "bulk")
        for job_id in ids:
            app.send_task(BATCH_ITEM_TASK, args=[job_id, batch_id, model], queue=queue, task_id=job_id,
                          producer=producer)
    return len(ids)


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
