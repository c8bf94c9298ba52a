"""Every message textgen puts on a queue: its task name, arguments, queue and task id, in one place.

The API and the workers build messages only here, so a task's name, its argument order and the
queue it travels on cannot drift between the side that sends and the side that runs it. Sending
is someone else's business: a ``Sender`` (Celery's ``send_task`` behind it) is handed in at start,
which keeps this module, like all of ``textgen_core``, free of Celery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from textgen_core.dispatch import Chunk
from textgen_core.keys import BATCH_DISPATCH_TASK, BATCH_ITEM_TASK, DELIVER_WEBHOOK_TASK, GENERATE_TASK, Keys
from textgen_core.priorities import DEFAULT_PRIORITY, send_options


@dataclass(frozen=True)
class Message:
    """One task message. ``task_id`` is the job id for job messages, so a job's message is
    recognisable in Flower and on the broker; other messages let the broker pick one."""

    task: str
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    countdown: float | None = None  # seconds before a worker may run it (webhook retries)
    priority: int | None = None  # the broker step of a job message (``textgen_core.priorities``)
    headers: Mapping[str, Any] | None = None  # ``enqueued_at`` of a job message, for aging and the gauges

    def send_options(self) -> dict[str, Any]:
        """The keyword arguments of Celery's ``send_task`` for this message."""
        options: dict[str, Any] = {"name": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                                   "queue": self.queue}
        if self.task_id is not None:
            options["task_id"] = self.task_id
        if self.countdown is not None:
            options["countdown"] = self.countdown
        if self.priority is not None:
            options["priority"] = self.priority
        if self.headers is not None:
            options["headers"] = dict(self.headers)
        return options


class Sender(Protocol):
    """Puts a message on the broker (the API's and the webhook worker's sends)."""

    def send(self, message: Message) -> None: ...


class BulkSender(Sender, Protocol):
    """A sender that can share one broker connection over a run of messages (a batch chunk's
    items); ``send_many`` sends them in order and returns how many it sent."""

    def send_many(self, messages: Iterable[Message]) -> int: ...


def generate(keys: Keys, job_id: str, model: str, lane: str = "interactive",
             priority: int = DEFAULT_PRIORITY) -> Message:
    """Run one job (``textgen.generate``) on its model's queue for ``lane``, at its priority."""
    return Message(GENERATE_TASK, keys.queue(model, lane), args=(job_id,), task_id=job_id,
                   **send_options(lane, priority))


def batch_item(keys: Keys, job_id: str, batch_id: str, model: str, priority: int = DEFAULT_PRIORITY) -> Message:
    """Run one batch item (``textgen.batch_item``); items always travel on the bulk lane."""
    return Message(BATCH_ITEM_TASK, keys.queue(model, "bulk"), args=(job_id, batch_id, model), task_id=job_id,
                   **send_options("bulk", priority))


def batch_dispatch(keys: Keys, chunk: Chunk, priority: int = DEFAULT_PRIORITY) -> Message:
    """Turn one chunk of a batch into its item messages (``textgen.batch_dispatch``), on the bulk lane."""
    return Message(BATCH_DISPATCH_TASK, keys.queue(chunk.model, "bulk"), args=tuple(chunk),
                   **send_options("bulk", priority))


def webhook_delivery(keys: Keys, request: Mapping[str, Any], countdown: float | None = None) -> Message:
    """Deliver one webhook (``textgen.deliver_webhook``) on the webhook workers' queue; ``request`` is a
    ``DeliveryRequest`` as a dict."""
    return Message(DELIVER_WEBHOOK_TASK, keys.webhook_queue, kwargs={"request": dict(request)},
                   countdown=countdown)
