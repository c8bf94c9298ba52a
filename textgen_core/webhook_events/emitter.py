"""Turning an event into a queued delivery: the one call jobs and batches both use.

``emit`` checks the object's filter, applies an optional throttle shared by every process, builds
the payload (the object exactly as ``GET`` returns it, plus ``type``) and queues it with a fresh
``webhook_id``. The core (:class:`EmitterCore`, no I/O) decides and builds; the shells
:class:`WebhookEmitter` (workers, synchronous) and :class:`AsyncWebhookEmitter` (API) only do the
throttle's ``SET NX`` and the send. The sending itself is injected (a Celery ``send_task``), so this
module stays free of Celery.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from textgen_core.batch_view import BatchOut
from textgen_core.batches import BatchRecord
from textgen_core.jobs import PRIVATE_FIELDS
from textgen_core.keys import Keys
from textgen_core.webhooks.models import FILTER_WORD, DeliveryRequest

Send = Callable[[dict[str, Any]], None]
# A payload, or a function that builds it (called only once the event is known to be sent).
Payload = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
AsyncSend = Callable[[dict[str, Any]], Awaitable[None]]


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "stream": f"{base}/stream", "cancel": f"{base}/cancel"}


def job_payload(job: Any) -> dict[str, Any]:
    """A job as ``GET /v1/jobs/{id}`` returns it (without what only the platform sees)."""
    data: dict[str, Any] = job.model_dump(mode="json", exclude=PRIVATE_FIELDS)
    data["links"] = job_links(job.id)
    return data


def batch_payload(batch: BatchRecord) -> dict[str, Any]:
    """A batch as ``GET /v1/batches/{id}`` returns it."""
    return BatchOut.of(batch).model_dump(mode="json")


def wanted(event: str, events_filter: Sequence[str] | None) -> bool:
    """Whether an object whose filter is ``events_filter`` asked for ``event`` (None: every event)."""
    return events_filter is None or FILTER_WORD.get(event) in events_filter


def make_delivery(*, owner: str, url: str, event: str, object_id: str, payload: Payload,
                  webhook_id: str | None = None) -> DeliveryRequest:
    """The delivery of one event; a fresh ``webhook_id`` unless the event has its own (outbox)."""
    body = json.dumps({"type": event, **(payload() if callable(payload) else payload)}, separators=(",", ":"))
    return DeliveryRequest(owner=owner, url=url, event=event, object_id=object_id,
                           webhook_id=webhook_id or "msg_" + secrets.token_hex(16), body=body)


class Throttle(NamedTuple):
    """The ``SET key 1 NX PX px`` that lets one throttled event through per interval."""

    key: str
    px: int


@dataclass(frozen=True)
class EmitterCore:
    """Whether an event goes out, its throttle, and its delivery message."""

    keys: Keys

    @staticmethod
    def wanted(url: str | None, event: str, events_filter: Sequence[str] | None) -> bool:
        return bool(url) and wanted(event, events_filter)

    def throttle(self, object_id: str, event: str, seconds: float | None) -> Throttle | None:
        if not seconds:
            return None
        return Throttle(self.keys.webhook_throttle(object_id, event), max(1, int(seconds * 1000)))

    @staticmethod
    def delivery(*, owner: str, url: str, event: str, object_id: str, payload: Payload,
                 webhook_id: str | None) -> DeliveryRequest:
        return make_delivery(owner=owner, url=url, event=event, object_id=object_id, payload=payload,
                             webhook_id=webhook_id)


@dataclass
class WebhookEmitter:
    """Queues webhook events from synchronous code (workers)."""

    client: redis.Redis
    keys: Keys
    send: Send

    def __post_init__(self) -> None:
        self.core = EmitterCore(self.keys)

    def emit(self, *, owner: str, url: str | None, event: str, object_id: str, payload: Payload,
             events_filter: Sequence[str] | None = None, throttle_seconds: float | None = None,
             webhook_id: str | None = None) -> str | None:
        """Queue ``event`` for ``url``; returns its webhook id, or None when filtered or throttled.

        ``webhook_id`` fixes the id (an outbox event, the same on every re-send); by default each
        call is a new event with a fresh id."""
        if not url or not self.core.wanted(url, event, events_filter):
            return None
        throttle = self.core.throttle(object_id, event, throttle_seconds)
        if throttle and not self.client.set(throttle.key, "1", nx=True, px=throttle.px):
            return None
        request = self.core.delivery(owner=owner, url=url, event=event, object_id=object_id, payload=payload,
                                     webhook_id=webhook_id)
        self.send(request.model_dump())
        return request.webhook_id


@dataclass
class AsyncWebhookEmitter:
    """Queues webhook events from the API's event loop."""

    client: aioredis.Redis
    keys: Keys
    send: AsyncSend

    def __post_init__(self) -> None:
        self.core = EmitterCore(self.keys)

    async def emit(self, *, owner: str, url: str | None, event: str, object_id: str, payload: Payload,
                   events_filter: Sequence[str] | None = None, throttle_seconds: float | None = None,
                   webhook_id: str | None = None) -> str | None:
        """As :meth:`WebhookEmitter.emit`."""
        if not url or not self.core.wanted(url, event, events_filter):
            return None
        throttle = self.core.throttle(object_id, event, throttle_seconds)
        if throttle and not await self.client.set(throttle.key, "1", nx=True, px=throttle.px):
            return None
        request = self.core.delivery(owner=owner, url=url, event=event, object_id=object_id, payload=payload,
                                     webhook_id=webhook_id)
        await self.send(request.model_dump())
        return request.webhook_id
