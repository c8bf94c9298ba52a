"""Webhook events on the worker side: a job's ``job.started`` at claim, ``job.output`` at most
every interval while it runs, ``job.completed`` once when it ends; and, as a batch item ends,
its batch's ``batch.progress`` (throttled) or ``batch.completed`` (once, when it settled)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from textgen_core.batch_store import BatchStore
from textgen_core.batches import BatchStatus
from textgen_core.jobs import JobRecord
from textgen_core.store import JobStore
from textgen_core.webhook_events.emitter import WebhookEmitter, batch_payload, job_payload
from textgen_core.webhook_events.outbox import Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class JobWebhooks:
    store: JobStore
    emitter: WebhookEmitter
    output_interval: float = 0.5
    batch_progress_interval: float = 10.0
    outbox_lease_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.batches = BatchStore(self.store.r, self.store.keys, ttl=self.store.core.job_ttl,
                                  stream_ttl=self.store.core.stream_ttl)
        self.outbox = Outbox(self.store.r, self.store.keys, self.emitter, self.store, self.batches,
                             lease_seconds=self.outbox_lease_seconds)

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
        """Hooked to the store's terminal transitions, so it runs once per job. The scripts recorded
        the completion events in the outbox; this queues them at once (the sweeper, if we die first),
        and, for an item that did not settle its batch, the batch's progress."""
        try:
            ended = self.outbox.job_ended(job_id)
            if ended.batch_id and ended.batch_event is None:
                self._batch_progress(ended.batch_id)
        except Exception:  # the job's own outcome never depends on its webhook
            log.exception("could not queue the webhook events of %s", job_id)

    def _batch_progress(self, batch_id: str) -> None:
        fields = ["webhook", "webhook_events_filter", "status", "owner"]
        raw = self.store.r.hmget(self.store.keys.batch(batch_id), fields)
        hook, events, status, owner = (None if v is None else str(v) for v in raw)
        if not hook or not owner or '"progress"' not in (events or "") or not status or BatchStatus(status).terminal:
            return

        def payload() -> dict[str, Any]:  # read only when the throttle lets this one through
            batch = self.batches.get(batch_id)
            return batch_payload(batch) if batch else {"id": batch_id}

        self.emitter.emit(owner=owner, url=hook, event="batch.progress", object_id=batch_id, payload=payload,
                          events_filter=["progress"], throttle_seconds=self.batch_progress_interval)

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
