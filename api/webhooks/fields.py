"""The ``webhook`` and ``webhook_events_filter`` request fields, shared by jobs and batches."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, Field, field_validator

from textgen_core.webhooks.models import BatchWebhookEvent, default_batch_events
from textgen_core.webhooks.urls import UnsafeWebhookURL, parse


def _http_url(value: str) -> str:
    try:
        parse(value)
    except UnsafeWebhookURL as exc:
        raise ValueError(str(exc)) from exc
    return value


# Whether the host resolves to a public address is checked at submit (``api.webhooks.service``), off the loop.
WebhookURL = Annotated[str, Field(max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?$"),
                       AfterValidator(_http_url)]
WEBHOOK_DOC = "http(s) URL that receives signed events (Standard Webhooks)."


E = TypeVar("E", bound=str)


def unique_events(value: list[E]) -> list[E]:
    return list(dict.fromkeys(value))


class BatchWebhookFields(BaseModel):
    """A batch's webhook: ``batch.completed`` when it ends, ``batch.progress`` (throttled) while it runs."""

    webhook: WebhookURL | None = Field(default=None, description=WEBHOOK_DOC)
    webhook_events_filter: list[BatchWebhookEvent] = Field(
        default_factory=default_batch_events, min_length=1, max_length=2,
        description="Events to send: completed, progress (at most every webhook_batch_progress_seconds).")

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, value: list[BatchWebhookEvent]) -> list[BatchWebhookEvent]:
        return unique_events(value)
