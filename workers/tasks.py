"""Celery tasks: thin wrappers over ``textgen_core`` (serialization, acks, nothing else)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from celery import shared_task

from textgen_core import messages
from textgen_core.dispatch import Chunk
from textgen_core.jobs import JobStatus
from textgen_core.keys import BATCH_DISPATCH_TASK, BATCH_ITEM_TASK, GENERATE_TASK, Keys
from textgen_core.leases import Reaped
from textgen_core.priorities import DEFAULT_PRIORITY
from workers.runtime import runtime

# ``shared_task``: the tasks bind to the worker's app (``workers.app`` imports this module), so this
# module needs no import of it; messages go out through the runtime's sender.


@shared_task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
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
        keys = _keys()
        runtime().sender.send(messages.generate(keys, job.job_id, job.model, job.lane,
                                                _priority_of(keys.job(job.job_id))))


def send_item(job_id: str, batch_id: str, model: str) -> None:
    keys = _keys()
    runtime().sender.send(messages.batch_item(keys, job_id, batch_id, model, _priority_of(keys.job(job_id))))


def _keys() -> Keys:
    return Keys(runtime().settings.key_prefix)


@shared_task(name=BATCH_DISPATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_dispatch(batch_id: str, model: str, start: int, stop: int) -> int:
    """Enqueue one chunk of a batch's items on the bulk lane, holding the chunk's lease while it
    sends (``textgen_core/dispatch.py``): a copy of a chunk already dispatched, or of an ended
    batch, does nothing; a chunk half sent when this worker died is sent again by a reaper."""
    rt = runtime()
    chunk = Chunk(batch_id, model, start, stop)
    if not rt.chunks.take(chunk):
        return 0
    try:
        ids = rt.batches.job_ids(batch_id, start, stop)
        delay = rt.settings.test_dispatch_item_delay_seconds
        keys = _keys()
        priority = _priority_of(keys.batch(batch_id))

        def items() -> Iterator[messages.Message]:
            for job_id in ids:
                if delay:
                    time.sleep(delay)
                yield messages.batch_item(keys, job_id, batch_id, model, priority)

        rt.sender.send_many(items())
    except BaseException:
        rt.chunks.forget()  # left to lapse: a reaper sends the chunk again
        raise
    rt.chunks.done(chunk)
    return len(ids)


def resend_chunk(chunk: Chunk) -> None:
    """Send a reaped chunk's dispatch message again."""
    keys = _keys()
    runtime().sender.send(messages.batch_dispatch(keys, chunk, _priority_of(keys.batch(chunk.batch_id))))


@shared_task(name=BATCH_ITEM_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
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
