"""A job's webhook events on the worker side: ``job.started`` at claim, ``job.output`` at most
every interval while it runs, ``job.completed`` once when it ends."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from textgen_core.jobs import JobRecord
from textgen_core.store import JobStore
from textgen_core.webhooks.events import WebhookEmitter, job_payload

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class JobWebhooks:
    store: JobStore
    emitter: WebhookEmitter
    output_interval: float = 0.5

    def _emit(self, job: JobRecord, event: str, payload: dict[str, Any]) -> None:
        try:
            self.emitter.emit(owner=job.owner, url=job.webhook, event=event, object_id=job.id, payload=payload,
                              events_filter=job.webhook_events_filter)
        except Exception:  # the job's own outcome never depends on its webhook
            log.exception("could not queue %s for %s", event, job.id)

    def started(self, job: JobRecord) -> None:
        if job.webhook and "start" in job.webhook_events_filter:
            self._emit(job, "job.started", job_payload(job))

    def completed(self, job_id: str) -> None:
        """Hooked to the store's terminal transitions, so it runs once per job."""
        job = self.store.get(job_id)
        if job is not None and job.webhook:
            self._emit(job, "job.completed", job_payload(job))

    def await_result(self, job: JobRecord, future: Future[T]) -> T:
        """Wait for the engine's result, sending ``job.output`` (text so far) while it runs."""
        if not job.webhook or "output" not in job.webhook_events_filter:
            return future.result()
        key = self.store.keys.tokens(job.id)
        last, text, sent = "0-0", "", ""
        while True:
            try:
                return future.result(timeout=self.output_interval)
            except TimeoutError:
                pass
            try:
                batches: list[tuple[str, list[tuple[str, dict[str, str]]]]] = self.store.r.xread(  # type: ignore[assignment]
                    {key: last}, count=100_000) or []
                for _, entries in batches:
                    for entry_id, fields in entries:
                        last = entry_id
                        text += fields.get("d", "")
            except Exception:
                log.exception("could not read the output of %s", job.id)
                continue
            if text != sent:
                sent = text
                current = self.store.get(job.id) or job
                self._emit(job, "job.output", {**job_payload(current), "output": text})
