"""The workers' ``Sender``: ``textgen_core.messages`` onto the broker through a Celery app.

Handed to the runtime and the outbox at start, so no module that sends imports the Celery app
(``workers.app`` imports them, not the other way round).
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from textgen_core.messages import Message


class CelerySender:
    def __init__(self, app: Celery):
        self.app = app

    def send(self, message: Message) -> None:
        self.app.send_task(**message.send_options())

    def send_many(self, messages: Iterable[Message]) -> int:
        sent = 0
        with self.app.producer_or_acquire() as producer:  # one connection for the run
            for message in messages:
                self.app.send_task(**message.send_options(), producer=producer)
                sent += 1
        return sent
