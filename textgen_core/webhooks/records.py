"""The record of delivery attempts kept beside a job or batch (``webhook_deliveries``)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import redis

from textgen_core.keys import Keys
from textgen_core.webhooks.models import WebhookDelivery

log = logging.getLogger(__name__)


def record_attempt(client: redis.Redis, keys: Keys, object_id: str, delivery: WebhookDelivery, *,
                   keep: int, ttl: int) -> None:
    key = keys.webhook_deliveries(object_id)
    pipe = client.pipeline(transaction=True)
    pipe.rpush(key, delivery.model_dump_json())
    pipe.ltrim(key, -keep, -1)
    pipe.expire(key, ttl)
    pipe.execute()


def parse_deliveries(raw: Iterable[str]) -> list[WebhookDelivery]:
    out: list[WebhookDelivery] = []
    for entry in raw:
        try:
            out.append(WebhookDelivery.model_validate_json(entry))
        except ValueError:
            log.warning("skipping an unreadable webhook delivery record")
    return out


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]
