"""The webhook worker's Celery app: delivery only, no model. Run it with ``textgen webhook-worker``.

Deliveries live on their own queue and in their own lightweight process, so a slow or dead
receiver (10 s timeouts, retries for a day) never takes a slot from generation. Each webhook
worker also sweeps the outbox for completion events that no one queued.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_shutdown

from textgen_core.keys import Keys
from textgen_core.settings import get_settings
from workers.sender import CelerySender
from workers.webhook_outbox import start_sweeper

app = Celery("textgen-webhooks", include=["workers.webhook_tasks"])
app.config_from_object("celeryconfig")
app.conf.task_default_queue = Keys(get_settings().key_prefix).webhook_queue
sender = CelerySender(app)  # retries (webhook_tasks) and the outbox sweeper send through it

log = logging.getLogger(__name__)
_stop = threading.Event()


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    port = settings.webhook_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=settings.worker_metrics_host)
        log.info("webhook metrics on http://%s:%d/metrics", settings.worker_metrics_host, port)


@worker_init.connect
def _sweep_outbox(**_: Any) -> None:
    start_sweeper(get_settings(), _stop, sender)


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
