"""Putting jobs on Celery queues by task name: the API never imports worker or model code."""

from __future__ import annotations

from anyio import to_thread
from celery import Celery

from textgen_core.keys import DELIVER_WEBHOOK_TASK, GENERATE_TASK, Keys
from textgen_core.priorities import DEFAULT_PRIORITY, send_options


class JobQueue:
    def __init__(self, keys: Keys):
        self.keys = keys
        self.celery = Celery("textgen-api")
        self.celery.config_from_object("celeryconfig")

    async def enqueue(self, job_id: str, model: str, lane: str = "interactive",
                      priority: int = DEFAULT_PRIORITY) -> None:
        queue = self.keys.queue(model, lane)
        await to_thread.run_sync(
            lambda: self.celery.send_task(GENERATE_TASK, args=[job_id], queue=queue, task_id=job_id,
                                          retry=False, **send_options(lane, priority))
        )

    async def enqueue_webhook(self, request: dict[str, object]) -> None:
        """Queue one webhook delivery (built by ``AsyncWebhookEmitter``) for the webhook worker."""
        await to_thread.run_sync(
            lambda: self.celery.send_task(DELIVER_WEBHOOK_TASK, kwargs={"request": request},
                                          queue=self.keys.webhook_queue)
        )
