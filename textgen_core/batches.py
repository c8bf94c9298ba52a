"""Batch records: many generation jobs (items) submitted, counted and read back together.

Each item is an ordinary job record on the bulk lane carrying ``batch_id`` and ``custom_id``,
so items use the same claim/finish scripts as interactive jobs; those scripts keep the batch's
counts (``settle_batch_item`` in ``textgen_core/scripts/fragments.py``). A batch is ``validating``
while its items are written, ``in_progress`` once they are all enqueued, ``cancelling`` after a
cancel, and ends ``completed`` (every item ended, some may have failed), ``canceled``, ``failed``, or
``expired`` (its ``completion_window`` passed: the items it had not finished by then ended ``expired``).
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from textgen_core.jobs import JobInput, SamplingParams
from textgen_core.modes import Mode
from textgen_core.priorities import DEFAULT_PRIORITY
from textgen_core.webhooks.models import BatchWebhookEvent, WebhookDelivery, default_batch_events
from textgen_core.webhooks.records import parse_deliveries


class BatchStatus(enum.StrEnum):
    validating = "validating"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelling = "cancelling"
    canceled = "canceled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self in (BatchStatus.completed, BatchStatus.failed, BatchStatus.canceled, BatchStatus.expired)


class ItemSpec(BaseModel):
    """One validated item, ready to become a job record."""

    custom_id: str
    mode: Mode
    input: JobInput
    params: SamplingParams
    deadline_seconds: float | None = None  # the item's own deadline, from the batch's creation


class BatchRecord(BaseModel):
    id: str
    owner: str
    status: BatchStatus = BatchStatus.validating
    model: str
    mode: Mode = Mode.general
    priority: int = DEFAULT_PRIORITY  # of every item (textgen_core/priorities.py)
    kind: Literal["native", "openai"] = "native"
    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    expired: int = 0
    created_at: float = Field(default_factory=time.time)
    expires_at: float | None = None  # created_at + completion_window: items unfinished then end expired
    started_at: float | None = None
    finished_at: float | None = None
    cancelling_at: float | None = None
    cancel_requested: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[BatchWebhookEvent] = Field(default_factory=default_batch_events)
    webhook_deliveries: list[WebhookDelivery] = Field(default_factory=list)  # kept in their own list

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.canceled + self.expired

    def rate(self, now: float | None = None) -> float | None:
        """Items per second since the first item started."""
        if not self.started_at or not self.done:
            return None
        end = self.finished_at or (now or time.time())
        return self.done / max(end - self.started_at, 1e-6)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the observed rate (0 once terminal, None before the first item ends)."""
        if self.status.terminal:
            return 0.0
        rate = self.rate(now)
        return round((self.total - self.done) / rate, 1) if rate else None

    def encode(self) -> dict[str, str]:
        data = self.model_dump(mode="json")
        # Unset times are left out, so the scripts can set them once with HSETNX.
        own = ("metadata", "cancel_requested", "webhook_events_filter", "webhook_deliveries")
        out = {k: str(v) for k, v in data.items() if v is not None and k not in own}
        out["created_at"] = repr(self.created_at)
        out["metadata"] = json.dumps(self.metadata, separators=(",", ":"))
        out["webhook_events_filter"] = json.dumps(self.webhook_events_filter, separators=(",", ":"))
        out["cancel_requested"] = "1" if self.cancel_requested else "0"
        return out

    @classmethod
    def decode(cls, raw: dict[str, str], deliveries: list[str] | None = None) -> BatchRecord:
        fields: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
        fields["metadata"] = json.loads(raw.get("metadata") or "{}")
        fields["webhook_events_filter"] = json.loads(raw.get("webhook_events_filter") or '["completed"]')
        fields["webhook_deliveries"] = parse_deliveries(deliveries or [])
        fields["cancel_requested"] = raw.get("cancel_requested") == "1"
        for name in ("total", "completed", "failed", "canceled", "expired"):
            fields[name] = int(raw.get(name) or 0)
        return cls.model_validate(fields)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)
