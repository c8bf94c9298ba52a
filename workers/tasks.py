"""Celery tasks: thin wrappers over ``textgen_core`` (serialization, acks, nothing else)."""

from __future__ import annotations

from textgen_core.keys import GENERATE_TASK
from workers.app import app
from workers.runtime import runtime


@app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(job_id: str) -> str | None:
    status = runtime().executor.run(job_id)
    return status.value if status else None
