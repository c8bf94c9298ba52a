"""OpenAI Responses on top of jobs: a response is a job whose id starts with ``resp_``.

The job record holds everything that decides and reports the generation (input, sampling
parameters, status, output, usage); what only the Responses protocol needs besides
(``instructions``, ``previous_response_id``, ``background``, ``store``) is kept as JSON in the
job hash's ``response`` field, so it lives and expires with the job. This module maps a job to
the OpenAI ``Response`` object and to the webhook event its end sends; the API and the
webhook outbox (worker side) both use it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Literal

from pydantic import BaseModel

from textgen_core.jobs import ChatMessage, JobRecord, JobStatus, turn_messages

RESPONSE_ID_PREFIX = "resp_"
META_FIELD = "response"  # field of the job hash (Keys.job) holding ResponseMeta as JSON

ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "incomplete"})


class ResponseMeta(BaseModel):
    """The request fields a job has no place for, echoed on every read of the response."""

    instructions: str | None = None
    previous_response_id: str | None = None
    background: bool = False
    store: bool = True


def new_response_id() -> str:
    return RESPONSE_ID_PREFIX + secrets.token_hex(12)


def is_response(job_id: str) -> bool:
    return job_id.startswith(RESPONSE_ID_PREFIX)


def message_id(response_id: str) -> str:
    """The id of a response's one output message (stable, so a replayed stream names the same item)."""
    return "msg_" + response_id.removeprefix(RESPONSE_ID_PREFIX)


def response_status(job: JobRecord) -> ResponseStatus:
    if job.status is JobStatus.queued:
        return "queued"
    if job.status is JobStatus.running:
        return "in_progress"
    if job.status is JobStatus.succeeded:
        return "incomplete" if job.finish_reason in ("length", "time_limit") else "completed"
    if job.status is JobStatus.canceled:
        return "cancelled"
    if job.status is JobStatus.expired:  # its deadline passed: text so far (maybe none), reason "deadline"
        return "incomplete"
    return "failed"


def history_after(job: JobRecord, max_turns: int) -> list[ChatMessage]:
    """The history a response that follows ``job`` (``previous_response_id``) reads: the earlier
    turns and ``job``'s own, without its instructions (OpenAI does not carry those over)."""
    messages = [*job.history, *turn_messages(job, job.output or "")]
    return messages[-2 * max_turns:]


def output_items(job: JobRecord, text: str | None = None, *, done: bool = True) -> list[dict[str, Any]]:
    """The response's output: one assistant message holding the text as ``output_text``."""
    if text is None:
        text = job.output or ""
    status = "completed" if response_status(job) == "completed" else "incomplete"
    return [{
        "id": message_id(job.id), "type": "message", "role": "assistant",
        "status": status if done else "in_progress",
        "content": [output_text(text)],
    }]


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage_of(job: JobRecord) -> dict[str, Any] | None:
    if job.usage is None:
        return None
    return {
        "input_tokens": job.usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": job.usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": job.usage.total_tokens,
    }


def _error_of(job: JobRecord) -> dict[str, Any] | None:
    if job.status is not JobStatus.failed:
        return None
    return {"code": "server_error", "message": job.error.message if job.error else "generation failed"}


def response_object(job: JobRecord, meta: ResponseMeta, *, status: ResponseStatus | None = None) -> dict[str, Any]:
    """The OpenAI ``Response`` for ``job``; ``status`` overrides it (a stream's opening snapshots)."""
    status = status or response_status(job)
    terminal = status in TERMINAL_STATUSES
    incomplete = None
    if status == "incomplete":
        reasons = {"length": "max_output_tokens", "deadline": "deadline"}
        incomplete = {"reason": reasons.get(job.finish_reason or "")}
    return {
        "id": job.id,
        "object": "response",
        "created_at": int(job.timings.created_at),
        "status": status,
        "background": meta.background,
        "completed_at": int(job.timings.finished_at) if status == "completed" and job.timings.finished_at else None,
        "error": _error_of(job) if terminal else None,
        "incomplete_details": incomplete,
        "instructions": meta.instructions,
        "max_output_tokens": job.params.max_tokens,
        "metadata": job.metadata,
        "model": job.model,
        "output": output_items(job) if terminal else [],
        "parallel_tool_calls": False,
        "previous_response_id": meta.previous_response_id,
        "store": meta.store,
        "temperature": job.params.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": job.params.top_p,
        "truncation": "disabled",
        "usage": usage_of(job) if terminal else None,
    }


WEBHOOK_EVENTS: dict[str, str] = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.cancelled",
}


def webhook_event(job: JobRecord) -> str:
    """The event a response's end sends in place of ``job.completed``."""
    return WEBHOOK_EVENTS.get(response_status(job), "response.failed")


def webhook_payload(job: JobRecord, event: str) -> dict[str, Any]:
    """OpenAI's webhook event body (``type`` is added by the emitter); the id is the same on every send."""
    digest = hashlib.sha256(f"{event}:{job.id}".encode()).hexdigest()[:32]
    at = job.timings.finished_at or job.timings.created_at
    return {"id": f"evt_{digest}", "object": "event", "created_at": int(at), "data": {"id": job.id}}
