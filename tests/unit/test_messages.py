"""Each message textgen sends: its task name, queue, arguments and task id (``textgen_core.messages``).

The worker side runs tasks registered under these names with these argument orders; an integration
test (tests/integration/test_jobs.py, test_batches.py, test_webhooks.py) proves the messages flow.
"""

from __future__ import annotations

import time
from typing import Any

from textgen_core import messages
from textgen_core.dispatch import Chunk
from textgen_core.keys import BATCH_DISPATCH_TASK, BATCH_ITEM_TASK, DELIVER_WEBHOOK_TASK, GENERATE_TASK, Keys
from textgen_core.priorities import DEFAULT_PRIORITY, ENQUEUED_AT_HEADER, message_priority

KEYS = Keys("tg-test")


def queued(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the ``enqueued_at`` header, which must say about now."""
    headers = options.pop("headers")
    assert abs(headers.pop(ENQUEUED_AT_HEADER) - time.time()) < 60 and headers == {}
    return options


def test_generate_goes_to_the_lane_of_its_model_under_the_job_id() -> None:
    interactive = messages.generate(KEYS, "job_1", "m", "interactive")
    assert queued(interactive.send_options()) == {
        "name": GENERATE_TASK, "args": ["job_1"], "kwargs": {}, "queue": KEYS.queue("m", "interactive"),
        "task_id": "job_1", "priority": message_priority("interactive", DEFAULT_PRIORITY)}
    bulk = messages.generate(KEYS, "job_2", "m", "bulk")
    assert bulk.queue == KEYS.queue("m", "bulk") != interactive.queue


def test_batch_item_travels_on_the_bulk_lane_under_the_job_id() -> None:
    item = messages.batch_item(KEYS, "job_1", "batch_1", "m")
    assert queued(item.send_options()) == {
        "name": BATCH_ITEM_TASK, "args": ["job_1", "batch_1", "m"], "kwargs": {}, "queue": KEYS.queue("m", "bulk"),
        "task_id": "job_1", "priority": message_priority("bulk", DEFAULT_PRIORITY)}


def test_batch_dispatch_carries_the_chunk_and_lets_the_broker_name_it() -> None:
    dispatch = messages.batch_dispatch(KEYS, Chunk("batch_1", "m", 0, 500))
    assert queued(dispatch.send_options()) == {
        "name": BATCH_DISPATCH_TASK, "args": ["batch_1", "m", 0, 500], "kwargs": {}, "queue": KEYS.queue("m", "bulk"),
        "priority": message_priority("bulk", DEFAULT_PRIORITY)}


def test_webhook_delivery_goes_to_the_webhook_queue_with_its_wait() -> None:
    request = {"url": "https://example.test/hook", "attempt": 1}
    now = messages.webhook_delivery(KEYS, request)
    assert now.send_options() == {"name": DELIVER_WEBHOOK_TASK, "args": [], "kwargs": {"request": request},
                                  "queue": KEYS.webhook_queue}
    later = messages.webhook_delivery(KEYS, request, countdown=30.0)
    assert later.send_options()["countdown"] == 30.0 and later.queue == KEYS.webhook_queue


def test_queues_follow_the_key_prefix() -> None:
    other = Keys("elsewhere")
    assert messages.generate(other, "j", "m").queue == other.queue("m", "interactive") != \
        messages.generate(KEYS, "j", "m").queue
