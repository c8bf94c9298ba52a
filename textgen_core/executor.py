"""Running one job: claim it, render its prompt, generate through the engine, record the outcome.

This is the whole of a worker's business logic; the Celery task only calls :meth:`run`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from textgen_core import metrics
from textgen_core.cache import CacheEntry, Flight, HandBack, ResultCache, hit_outcome
from textgen_core.deadlines import FINISH_REASON, deadline_timer, stopped_by_deadline
from textgen_core.jobs import JobRecord, JobStatus, turn_messages
from textgen_core.prompt_render import chat_messages
from textgen_core.settings import Settings
from textgen_core.store import Claim, JobStore
from textgen_core.webhook_events.job_events import JobWebhooks

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    def submit(self, job_id: str, prompt_ids: list[int], params: Any, lane: str = ..., priority: int = ...) -> Any: ...
    def cancel(self, job_id: str) -> None: ...


def render_prompt_ids(tokenizer: Any, job: JobRecord, history_max_tokens: int) -> list[int]:
    """Token ids the model reads for ``job``: raw text, or the chat template over mode + history."""
    if job.input.raw:
        return list(tokenizer.encode(job.input.prompt or "", add_special_tokens=False))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    messages = chat_messages(count, job.mode, job.input, job.history, history_max_tokens)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


@dataclass
class JobExecutor:
    store: JobStore
    settings: Settings
    worker_name: str
    engines: dict[str, EngineLike]
    tokenizers: dict[str, Any]
    webhooks: JobWebhooks | None = None
    cache: ResultCache | None = None
    _inflight: dict[str, EngineLike] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job_id: str, attempt_token: str | None = None, *, may_hand_back: bool = False) -> JobStatus | None:
        """Run a job once. Safe to call for a redelivered message: only a queued job is claimed.

        ``attempt_token``: the token of the caller's lease, which the claim takes over.
        ``may_hand_back`` (batch items): rather than wait for an identical job that is generating, hand
        the job back (status ``queued``, the attempt not counted); the caller re-sends its message."""
        attempt = attempt_token or uuid.uuid4().hex
        claim = self.store.claim(
            job_id, worker=self.worker_name, attempt_token=attempt, max_attempts=self.settings.max_attempts
        )
        if not claim.owned:
            log.info("job %s not claimed: %s", job_id, claim.status or "missing")
            if claim.ended:
                self._observe_unclaimed(job_id, claim)
            return claim.status
        job = self.store.get(job_id)
        assert job is not None
        metrics.JOBS_STARTED.labels(job.model, self.store.keys.queue(job.model, job.lane), str(job.priority)).inc()
        if self.webhooks is not None:
            self.webhooks.started(job)
        engine = self.engines.get(job.model)
        if engine is None:
            return self._fail(job, attempt, f"model {job.model!r} is not served by worker {self.worker_name}")
        flight = None
        if self.cache is not None:
            begun = time.monotonic()
            plan = self.cache.begin(job, lambda: self.store.cancel_requested(job_id), self._running, may_hand_back)
            if isinstance(plan, CacheEntry):
                return self._finish_cached(job, attempt, plan, time.monotonic() - begun)
            if isinstance(plan, HandBack) and self.store.requeue(job_id, attempt, refund_attempt=True):
                return JobStatus.queued
            flight = plan if isinstance(plan, Flight) else None
        try:
            ids = render_prompt_ids(self.tokenizers[job.model], job, self.settings.history_max_tokens)
            with self._lock:
                self._inflight[job_id] = engine
            future = engine.submit(job_id, ids, job.params, lane=job.lane, priority=job.priority)
            if self.store.cancel_requested(job_id):
                engine.cancel(job_id)  # asked before we were listening for it
            with deadline_timer(job, engine):
                result = self.webhooks.await_result(job, future) if self.webhooks else future.result()
        except Exception as exc:
            log.warning("job %s failed: %s", job_id, exc)
            if flight is not None:
                flight.abandon()
            return self._fail(job, attempt, str(exc), getattr(exc, "error_type", "generation_error"))
        finally:
            with self._lock:
                self._inflight.pop(job_id, None)
        final = JobStatus.canceled if result.finish_reason == "canceled" else JobStatus.succeeded
        finish_reason = result.finish_reason
        if final is JobStatus.canceled and stopped_by_deadline(job) and not self.store.cancel_requested(job_id):
            final, finish_reason = JobStatus.expired, FINISH_REASON
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        if flight is not None:  # the entry first, so that no follower sees the job done without it
            flight.complete(result.finish_reason if final is JobStatus.succeeded else None, result.text, usage)
        recorded = self.store.finish(
            job,
            attempt_token=attempt,
            status=final,
            fields={"output": result.text, "finish_reason": finish_reason, "usage": usage,
                    "batch_size": str(result.batch_size)},
            history_append=turn_messages(job, result.text) if final is JobStatus.succeeded else None,
            history_max_turns=self.settings.history_max_turns,
            history_ttl=self.settings.history_ttl_seconds,
        )
        if recorded:
            self._observe(job, final, first_token_at=result.first_token_at, prompt_tokens=result.prompt_tokens,
                          completion_tokens=result.completion_tokens, batch_size=result.batch_size)
        return final

    def _running(self, job_id: str) -> bool:
        return self.store.r.hget(self.store.keys.job(job_id), "status") == "running"

    def _finish_cached(self, job: JobRecord, attempt: str, entry: CacheEntry, seconds: float) -> JobStatus:
        """End a claimed job with a cached result, as if generated: its text on the stream, history, hooks."""
        assert self.cache is not None
        fields, turn = hit_outcome(job, entry, seconds)
        self.store.append_deltas({job.id: entry.output} if entry.output else {})
        if self.store.finish(job, attempt_token=attempt, status=JobStatus.succeeded, fields=fields,
                             history_append=turn, history_max_turns=self.settings.history_max_turns,
                             history_ttl=self.settings.history_ttl_seconds):
            self.cache.count_hits(job.model)
            self._observe(job, JobStatus.succeeded)
        return JobStatus.succeeded

    def cancel(self, job_id: str) -> None:
        with self._lock:
            engine = self._inflight.get(job_id)
        if engine is not None:
            engine.cancel(job_id)

    def _fail(self, job: JobRecord, attempt: str, message: str, error_type: str = "generation_error") -> JobStatus:
        if self.store.finish(
            job,
            attempt_token=attempt,
            status=JobStatus.failed,
            fields={"finish_reason": "error", "error": {"message": message, "type": error_type}},
        ):
            metrics.DEAD_LETTERS.labels(job.model, self.store.keys.queue(job.model, job.lane), "error").inc()
            self._observe(job, JobStatus.failed, error=error_type)
        return JobStatus.failed

    def _observe_unclaimed(self, job_id: str, claim: Claim) -> None:
        """Count a job that the claim itself ended (attempts used up, deadline passed)."""
        job = self.store.get(job_id)
        if job is None or claim.status is None:
            return
        if claim.status is JobStatus.failed:
            metrics.DEAD_LETTERS.labels(job.model, self.store.keys.queue(job.model, job.lane), "max_attempts").inc()
        self._observe(job, claim.status, error="max_attempts_exceeded" if claim.status is JobStatus.failed else None)

    def _observe(self, job: JobRecord, status: JobStatus, *, first_token_at: float | None = None,
                 prompt_tokens: int = 0, completion_tokens: int = 0, batch_size: int | None = None,
                 error: str | None = None) -> None:
        """Metrics and one structured log line per job this attempt ended (counted once, by its owner)."""
        finished = time.time()
        queue = self.store.keys.queue(job.model, job.lane)
        started = job.timings.started_at
        metrics.observe_finished(job, queue, status.value, started_at=started, finished_at=finished,
                                 first_token_at=first_token_at, prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens)
        created = job.timings.created_at
        log.info("job %s", status.value, extra={
            "job_id": job.id, "model": job.model, "queue": queue, "status": status.value,
            "queue_seconds": round(started - created, 4) if started else None,
            "generation_seconds": round(finished - started, 4) if started else None,
            "e2e_seconds": round(finished - created, 4),
            "ttft_seconds": round(first_token_at - created, 4) if first_token_at else None,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "batch_size": batch_size,
            "error": error,
        })
