"""A batch as the API returns it (``GET /v1/batches/{id}``) and as its webhook events carry it.

One model for both, so a consumer parses a ``batch.completed`` payload with the model it already
uses for the API: the fields of OpenAI's Batch object (so the official SDK reads it unchanged)
plus textgen's own (counts with ``canceled``, times as floats, time left, links, webhooks).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from textgen_core.batches import BatchRecord, BatchStatus
from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY
from textgen_core.webhooks.models import BatchWebhookEvent, WebhookDelivery, default_batch_events


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int
    canceled: int
    expired: int = Field(default=0, description="Items that did not finish within the batch's completion "
                         "window or their own deadline.")


class BatchOut(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: str
    model: str
    mode: Mode
    priority: int = Field(default=DEFAULT_PRIORITY, description="Of every item: 0 (highest) to 2 (lowest).")
    endpoint: str | None
    input_file_id: str | None
    completion_window: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: None = None
    request_counts: RequestCounts
    created_at: int
    in_progress_at: int | None
    completed_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    failed_at: int | None = None
    expired_at: int | None = None
    finalizing_at: int | None = None
    expires_at: int | None
    started_at: float | None = Field(description="When the first item started.")
    finished_at: float | None
    items_per_second: float | None
    eta_seconds: float | None = Field(description="Seconds left at the rate observed so far.")
    metadata: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: list[BatchWebhookEvent] = Field(default_factory=default_batch_events)
    webhook_deliveries: list[WebhookDelivery] = Field(default_factory=list,
                                                      description="Every webhook delivery attempt, oldest first.")
    links: dict[str, str]

    @classmethod
    def of(cls, batch: BatchRecord) -> BatchOut:
        now = time.time()
        status = batch.status.value
        if batch.kind == "openai" and batch.status is BatchStatus.canceled:
            status = "cancelled"  # OpenAI's spelling, for the SDK
        terminal = batch.status.terminal
        finished = int(batch.finished_at) if batch.finished_at else None
        rate = batch.rate(now)
        base = f"/v1/batches/{batch.id}"
        return cls(
            id=batch.id, status=status, model=batch.model, mode=batch.mode, priority=batch.priority,
            endpoint=batch.endpoint,
            input_file_id=batch.input_file_id, completion_window=batch.completion_window,
            output_file_id=output_file_id(batch.id) if terminal and batch.kind == "openai" else None,
            error_file_id=error_file_id(batch.id) if terminal and batch.kind == "openai" else None,
            request_counts=RequestCounts(total=batch.total, completed=batch.completed, failed=batch.failed,
                                         canceled=batch.canceled, expired=batch.expired),
            created_at=int(batch.created_at),
            in_progress_at=int(batch.started_at or batch.created_at) if batch.status is not BatchStatus.validating
            else None,
            completed_at=finished if batch.status is BatchStatus.completed else None,
            cancelling_at=int(batch.cancelling_at) if batch.cancelling_at else None,
            cancelled_at=finished if batch.status is BatchStatus.canceled else None,
            expired_at=finished if batch.status is BatchStatus.expired else None,
            expires_at=int(batch.expires_at) if batch.expires_at else None,
            started_at=batch.started_at, finished_at=batch.finished_at,
            items_per_second=round(rate, 3) if rate else None, eta_seconds=batch.eta_seconds(now),
            metadata=batch.metadata, webhook=batch.webhook, webhook_events_filter=batch.webhook_events_filter,
            webhook_deliveries=batch.webhook_deliveries,
            links={"self": base, "results": f"{base}/results", "cancel": f"{base}/cancel"},
        )


def output_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-output"


def error_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-errors"
