"""Running one job: claim it, render its prompt, generate through the engine, record the outcome.

This is the whole of a worker's business logic; the Celery task only calls :meth:`run`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from textgen_core.jobs import ChatMessage, JobRecord, JobStatus
from textgen_core.modes import build_messages
from textgen_core.settings import Settings
from textgen_core.store import JobStore

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    def submit(self, job_id: str, prompt_ids: list[int], params: Any, lane: str = ...) -> Any: ...
    def cancel(self, job_id: str) -> None: ...


def render_prompt_ids(tokenizer: Any, job: JobRecord, history_max_tokens: int) -> list[int]:
    """Token ids the model reads for ``job``: raw text, or the chat template over mode + history."""
    if job.input.raw:
        return list(tokenizer.encode(job.input.prompt or "", add_special_tokens=False))
    history = trim_history(tokenizer, [m.model_dump() for m in job.history], history_max_tokens)
    messages = build_messages(
        job.mode,
        prompt=job.input.prompt,
        messages=[m.model_dump() for m in job.input.messages] if job.input.messages else None,
        history=history,
    )
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def trim_history(tokenizer: Any, history: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest turns until the history fits ``max_tokens``."""
    sizes = [len(tokenizer.encode(m["content"], add_special_tokens=False)) + 4 for m in history]
    while history and sum(sizes) > max_tokens:
        history, sizes = history[1:], sizes[1:]
    return history


def turn_messages(job: JobRecord, output: str) -> list[ChatMessage]:
    """What a succeeded job adds to its conversation: the new user turn(s) and the reply."""
    if job.input.messages:
        new = [m for m in job.input.messages if m.role != "system"]
    else:
        new = [ChatMessage(role="user", content=job.input.prompt or "")]
    return [*new, ChatMessage(role="assistant", content=output)]


@dataclass
class JobExecutor:
    store: JobStore
    settings: Settings
    worker_name: str
    engines: dict[str, EngineLike]
    tokenizers: dict[str, Any]
    _inflight: dict[str, EngineLike] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job_id: str) -> JobStatus | None:
        """Run a job once. Safe to call for a redelivered message: only a queued job is claimed."""
        attempt = uuid.uuid4().hex
        status = self.store.claim(
            job_id, worker=self.worker_name, attempt_token=attempt, max_attempts=self.settings.max_attempts
        )
        if status is not JobStatus.running:
            log.info("job %s not claimed: %s", job_id, status or "missing")
            return status
        job = self.store.get(job_id)
        assert job is not None
        engine = self.engines.get(job.model)
        if engine is None:
            return self._fail(job, attempt, f"model {job.model!r} is not served by worker {self.worker_name}")
        try:
            ids = render_prompt_ids(self.tokenizers[job.model], job, self.settings.history_max_tokens)
            with self._lock:
                self._inflight[job_id] = engine
            future = engine.submit(job_id, ids, job.params, lane=job.lane)
            if self.store.cancel_requested(job_id):
                engine.cancel(job_id)  # asked before we were listening for it
            result = future.result()
        except Exception as exc:
            log.warning("job %s failed: %s", job_id, exc)
            return self._fail(job, attempt, str(exc), type(exc).__name__)
        finally:
            with self._lock:
                self._inflight.pop(job_id, None)
        final = JobStatus.canceled if result.finish_reason == "canceled" else JobStatus.succeeded
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        self.store.finish(
            job,
            attempt_token=attempt,
            status=final,
            fields={"output": result.text, "finish_reason": result.finish_reason, "usage": usage,
                    "batch_size": str(result.batch_size)},
            history_append=turn_messages(job, result.text) if final is JobStatus.succeeded else None,
            history_max_turns=self.settings.history_max_turns,
            history_ttl=self.settings.history_ttl_seconds,
        )
        return final

    def cancel(self, job_id: str) -> None:
        with self._lock:
            engine = self._inflight.get(job_id)
        if engine is not None:
            engine.cancel(job_id)

    def _fail(self, job: JobRecord, attempt: str, message: str, kind: str = "generation_error") -> JobStatus:
        error_type = "prompt_too_long" if kind == "PromptTooLong" else "generation_error"
        self.store.finish(
            job,
            attempt_token=attempt,
            status=JobStatus.failed,
            fields={"finish_reason": "error", "error": {"message": message, "type": error_type}},
        )
        return JobStatus.failed
