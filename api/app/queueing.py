"""Putting the API's messages on Celery queues by task name: the API never imports worker or model code.

The messages themselves come from ``textgen_core.messages``; ``api.main`` hands ``JobQueue`` its
sender at start (``CelerySender`` over an app that only sends).
"""

from __future__ import annotations

from anyio import to_thread
from celery import Celery

from textgen_core import messages
from textgen_core.dispatch import Chunk
from textgen_core.keys import Keys
from textgen_core.messages import Message, Sender
from textgen_core.priorities import DEFAULT_PRIORITY


def celery_app() -> Celery:
    """A Celery app that sends and runs nothing: the broker settings of ``celeryconfig``."""
    app = Celery("textgen-api")
    app.config_from_object("celeryconfig")
    return app


class CelerySender:
    """Sends without Celery's retries (``retry=False``): a broker that is away fails the send at once,
    and the route answers 503 instead of holding the request."""

    def __init__(self, app: Celery):
        self.app = app

    def send(self, message: Message) -> None:
        self.app.send_task(**message.send_options(), retry=False)


class JobQueue:
    """The API's messages, sent off the event loop (Celery's send is blocking)."""

    def __init__(self, keys: Keys, sender: Sender):
        self.keys = keys
        self.sender = sender

    async def send(self, message: Message) -> None:
        await to_thread.run_sync(self.sender.send, message)

    async def enqueue(self, job_id: str, model: str, lane: str = "interactive",
                      priority: int = DEFAULT_PRIORITY) -> None:
        await self.send(messages.generate(self.keys, job_id, model, lane, priority))

    async def dispatch(self, chunk: Chunk, priority: int = DEFAULT_PRIORITY) -> None:
        """One chunk of a batch, for a worker to turn into item messages."""
        await self.send(messages.batch_dispatch(self.keys, chunk, priority))

    async def enqueue_webhook(self, request: dict[str, object]) -> None:
        """Queue one webhook delivery (built by ``AsyncWebhookEmitter``) for the webhook worker."""
        await self.send(messages.webhook_delivery(self.keys, request))
