"""The outbox sweeper: a thread in each webhook worker that queues completion events whose
process died between ending a job or batch and queueing the event (see ``textgen_core.webhook_events.outbox``)."""

from __future__ import annotations

import logging
import threading

import redis

from textgen_core.batch_store import BatchStore
from textgen_core.keys import Keys
from textgen_core.messages import Sender, webhook_delivery
from textgen_core.settings import Settings
from textgen_core.store import JobStore
from textgen_core.webhook_events.emitter import WebhookEmitter
from textgen_core.webhook_events.outbox import Outbox
from workers.webhook_metrics import OUTBOX_RESENT

log = logging.getLogger(__name__)


def outbox(settings: Settings, sender: Sender) -> Outbox:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    keys = Keys(settings.key_prefix)

    def send(request: dict[str, object]) -> None:
        sender.send(webhook_delivery(keys, request))

    store = JobStore(client, keys, job_ttl=settings.job_ttl_seconds, stream_ttl=settings.stream_ttl_seconds,
                     stream_maxlen=settings.stream_maxlen)
    batches = BatchStore(client, keys, ttl=settings.job_ttl_seconds, stream_ttl=settings.stream_ttl_seconds)
    return Outbox(client, keys, WebhookEmitter(client, keys, send), store, batches,
                  lease_seconds=settings.webhook_outbox_grace_seconds)


def start_sweeper(settings: Settings, stop: threading.Event, sender: Sender) -> threading.Thread:
    sweeper = outbox(settings, sender)

    def loop() -> None:
        while not stop.wait(settings.webhook_outbox_sweep_seconds):
            try:
                sent = sweeper.sweep(settings.webhook_outbox_grace_seconds)
            except redis.RedisError as exc:
                log.warning("outbox sweeper: %s", exc)
                continue
            if sent:
                OUTBOX_RESENT.inc(sent)
                log.warning("queued %d completion events that the process ending their job or batch did not", sent)

    thread = threading.Thread(target=loop, name="textgen-outbox-sweeper", daemon=True)
    thread.start()
    return thread
