"""Keeping a worker alive when Redis goes away while it runs jobs (celery/kombu 5.7).

When the broker connection drops, Celery's consumer collects the broken connection and starts
a new one. The channel of the old connection is still used afterwards: to restore its
unacknowledged messages when it is closed, and to acknowledge the messages of tasks that were
running and finish later. kombu's Redis channel then builds a client from the collected
connection, fails with ``AttributeError`` (the connection's ``client`` is gone), and the worker
stops as "unrecoverable", model and all. Raising the connection error it is instead lets
Celery treat it like any lost connection: it logs, reconnects and carries on. The messages
stay in Redis's unacked set, and the leases (``textgen_core/leases.py``) decide their jobs.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_connparams = kombu_redis.Channel._connparams


def _connparams_of_live_connection(self: Any, asynchronous: bool = False) -> Any:
    if self.connection.client is None:
        raise redis.exceptions.ConnectionError("the broker connection of this channel was lost and closed")
    return _connparams(self, asynchronous=asynchronous)


def install() -> None:
    kombu_redis.Channel._connparams = _connparams_of_live_connection  # type: ignore[method-assign]
