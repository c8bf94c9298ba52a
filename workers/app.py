"""The Celery app. Start a worker with ``textgen worker`` (or ``celery -A workers.app worker``)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, setup_logging, worker_init, worker_shutdown

from textgen_core.keys import LANES, Keys
from textgen_core.logs import configure_logging
from textgen_core.settings import get_settings
from workers import broker_compat
from workers.sender import CelerySender

app = Celery("textgen")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
broker_compat.install()

log = logging.getLogger(__name__)

# A worker that cannot start its runtime (a model that does not load) exits with this status.
EXIT_BOOT_FAILED = 3


def served_models() -> list[str]:
    settings = get_settings()
    ids = [m.id for m in settings.models]
    return [m for m in ids if m in settings.worker_models] if settings.worker_models else ids


@setup_logging.connect
def _logging(**_: Any) -> None:
    """Connected, so Celery leaves logging to us: the same JSON lines as the API."""
    configure_logging(get_settings(), "worker")


@celeryd_after_setup.connect
def _consume_model_queues(sender: str, instance: Any, **_: Any) -> None:
    """Consume the queues of the models this worker serves (both lanes)."""
    keys = Keys(get_settings().key_prefix)
    for model_id in served_models():
        for lane in LANES:
            instance.app.amqp.queues.select_add(keys.queue(model_id, lane))


@worker_init.connect
def _boot(sender: Any = None, **_: Any) -> None:
    # Imported here: loading torch is the worker's business, not the app module's.
    from workers.deadline_sweeper import start_deadline_sweeper
    from workers.runtime import start_runtime
    from workers.tasks import resend, resend_chunk

    try:
        rt = start_runtime(served_models(), name=getattr(sender, "hostname", None) or "worker",
                           sender=CelerySender(app))
    except Exception:
        # Celery logs a worker_init handler's error where no one reads it and goes on, consuming
        # nothing: a worker that says ready and serves no model. It exits instead, and says why.
        sys.stderr.write(f"textgen worker could not start:\n{traceback.format_exc()}")
        sys.stderr.flush()
        log.critical("worker could not start", exc_info=True)
        logging.shutdown()
        os._exit(EXIT_BOOT_FAILED)
    rt.start_reaper(resend, resend_chunk)
    start_deadline_sweeper(rt)


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    from workers.runtime import stop_runtime

    stop_runtime()
