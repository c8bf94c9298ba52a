"""Webhook event names, the delivery message and the record of one delivery attempt."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

JobWebhookEvent = Literal["start", "output", "completed"]
BatchWebhookEvent = Literal["progress", "completed"]
EventType = Literal["job.started", "job.output", "job.completed", "batch.progress", "batch.completed",
                    "response.completed", "response.incomplete", "response.failed", "response.cancelled"]

def default_job_events() -> list[JobWebhookEvent]:
    return ["completed"]


def default_batch_events() -> list[BatchWebhookEvent]:
    return ["completed"]


# The filter word each event type answers to (``start`` selects ``job.started``).
FILTER_WORD: dict[str, str] = {
    "job.started": "start",
    "job.output": "output",
    "job.completed": "completed",
    "batch.progress": "progress",
    "batch.completed": "completed",
    # A response's end (textgen_core.responses) is its job's completion.
    "response.completed": "completed",
    "response.incomplete": "completed",
    "response.failed": "completed",
    "response.cancelled": "completed",
}


class WebhookDelivery(BaseModel):
    """One attempt to deliver one event, as recorded on the job or batch."""

    at: float = Field(description="Unix time the attempt ended.")
    event: str
    webhook_id: str
    attempt: int
    status_code: int | None = None
    error: str | None = None
    delivered: bool = False


class DeliveryRequest(BaseModel):
    """A queued delivery: everything the webhook worker needs, serialized into the Celery message.

    ``body`` is the exact JSON text sent on every attempt, so retries carry the same payload
    under the same ``webhook_id``; only the timestamp and signature are new each time.
    """

    owner: str
    url: str
    event: str
    object_id: str
    webhook_id: str
    body: str
    attempt: int = 1
    not_before: float = 0.0
