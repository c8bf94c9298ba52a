"""The delivery task: a thin wrapper over ``WebhookDeliverer`` that schedules the retries."""

from __future__ import annotations

import time
from functools import cache

import redis

from textgen_core.keys import DELIVER_WEBHOOK_TASK, Keys
from textgen_core.messages import webhook_delivery
from textgen_core.settings import get_settings
from textgen_core.webhooks.delivery import Outcome, WebhookDeliverer, next_delay
from textgen_core.webhooks.models import DeliveryRequest
from workers.webhook_app import app, sender
from workers.webhook_metrics import DELIVERY_ATTEMPTS, DELIVERY_SECONDS

# A countdown longer than the broker's visibility timeout would be redelivered early; long waits
# are split into hops no longer than this, each one re-queuing the message for the rest.
MAX_HOP_SECONDS = 1800.0


@cache
def deliverer() -> WebhookDeliverer:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    return WebhookDeliverer(client, Keys(settings.key_prefix), settings)


def schedule(request: DeliveryRequest, delay: float) -> None:
    sender.send(webhook_delivery(Keys(get_settings().key_prefix), request.model_dump(),
                                 countdown=min(delay, MAX_HOP_SECONDS)))


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_webhook(request: dict[str, object]) -> str:
    req = DeliveryRequest.model_validate(request)
    wait = req.not_before - time.time()
    if wait > 0.05:
        schedule(req, wait)
        return "waiting"
    result = deliverer().attempt(req)
    outcome = result.outcome.value
    if result.outcome is Outcome.retry:
        delay = next_delay(req.attempt, get_settings().webhook_retry_schedule, result.retry_after)
        if delay is None:
            outcome = "failed"
        else:
            schedule(req.model_copy(update={"attempt": req.attempt + 1, "not_before": time.time() + delay}), delay)
    DELIVERY_ATTEMPTS.labels(event=req.event, outcome=outcome).inc()
    DELIVERY_SECONDS.observe(result.seconds)
    return outcome
