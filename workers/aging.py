"""The worker thread that ages waiting messages on the broker (``textgen_core/aging.py``)."""

from __future__ import annotations

import logging
import threading
import time

import redis

from textgen_core.aging import BrokerAging

log = logging.getLogger(__name__)


def period_for(aging_s: float) -> float:
    """A few passes per aging period (0.2..5 s): the bound on a wait grows by at most one pass."""
    return max(0.2, min(5.0, aging_s / 5))


def start_aging(aging: BrokerAging, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(period_for(aging.aging_s)):
            try:
                moved = aging.promote(time.time())
                if moved:
                    log.info("aged %d waiting messages up a priority", moved, extra={"moved": moved})
            except redis.RedisError as exc:
                log.warning("broker aging: %s", exc)

    thread = threading.Thread(target=loop, name="textgen-broker-aging", daemon=True)
    thread.start()
    return thread
