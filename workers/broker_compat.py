"""Keeping a worker alive when Redis goes away while it runs jobs (celery/kombu 5.7).

When the broker connection drops, Celery's consumer collects the broken connection and then
closes it; closing a Redis channel that still has unacknowledged messages tries to restore them
through the collected connection, kombu raises ``AttributeError`` (its ``client`` is gone), and
the worker stops as "unrecoverable", model and all. Those messages are still in Redis's unacked
set (and the leases in ``textgen_core/leases.py`` hand their jobs back if need be), so that one
close may fail quietly: the consumer then reconnects as it does for any connection error.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import consumer

log = logging.getLogger(__name__)

_ignore_errors = consumer.ignore_errors  # the only use in that module: closing the broken connection


def _close_broken_connection(conn: Any, fun: Any = None, *args: Any, **kwargs: Any) -> Any:
    try:
        return _ignore_errors(conn, fun, *args, **kwargs)
    except AttributeError as exc:
        log.warning("broker connection lost with messages unacknowledged; they stay in Redis (%s)", exc)
        return None


def install() -> None:
    consumer.ignore_errors = _close_broken_connection  # type: ignore[attr-defined]
