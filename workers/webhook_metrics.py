"""Prometheus metrics of webhook deliveries (served by the webhook worker, ``webhook_metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERY_ATTEMPTS = Counter(
    "textgen_webhook_delivery_attempts",
    "Webhook delivery attempts by event type and outcome "
    "(delivered, retry, failed = retries used up, rejected = 4xx, gone = 410, refused = unsafe or disabled URL).",
    ["event", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "textgen_webhook_delivery_seconds",
    "Time of one delivery attempt, from the URL check to the receiver's status line.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
OUTBOX_RESENT = Counter(
    "textgen_webhook_outbox_resent",
    "Completion events queued by the outbox sweeper, because the process that ended their job or batch "
    "died (or failed) before queueing them.",
)
